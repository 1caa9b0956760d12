"""Diarization of a long file sent in chunks: one labelling for the whole file.

Run:  .venv/bin/python bench/long_diarization.py [--minutes 40] [--chunk-seconds 600]

Builds a two-speaker conversation of `--minutes` from the shared speech set
(bench/conversation.py), starts the embedded server (real weights), and sends the file
through the pipeline's batch task as Elevenlabs-STT with diarization, with the direct
limit at 3 MB so that a file this long must be cut into chunks (10 min at most, 30 s of
overlap between neighbours, speakers tied together by the words both transcribe). The
segments table is scored against the known turns over the whole file (collar 0.25 s) and
against the one-speaker answer, in the same run:

  ratio = DER / one-speaker DER        goal: DER <= 15 %, one consistent labelling
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load bench/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--chunk-seconds", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    conversation, der = _load("conversation"), _load("der")
    for name in conversation.SOURCES.values():
        if not (conversation.AUDIO_DIR / name).is_file():
            raise SystemExit(f"missing {conversation.AUDIO_DIR / name}: the shared speech set is needed")

    import polars as pl
    from pydantic import SecretStr

    from config.settings import Settings
    from stt.server.launcher import EmbeddedServer
    from tasks.batch import transcribe_batch
    from tasks.batch_config import BatchConfig
    from tasks.discovery import discover
    from tasks.endpoint import Endpoint

    audio, reference = conversation.build(args.minutes, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-long-diarization-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        conversation.write_wav(src / "conversation.wav", audio)
        out = Path(tmp) / "out"
        settings = Settings(model="Elevenlabs-STT", diarize=True, chunk_seconds=args.chunk_seconds,
                            request_timeout_s=7200)
        with EmbeddedServer(startup_timeout_s=300) as server:
            cfg = BatchConfig.from_settings(settings, out=str(out), run_id="bench-long", endpoint=Endpoint(
                server.api_url, SecretStr(server.api_key), timeout_s=7200, idempotent=True))
            started = time.perf_counter()
            result = transcribe_batch.fn(list(discover(str(src))), cfg, 0)
            wall = time.perf_counter() - started
        if result.transcribed != 1:
            raise SystemExit(f"the file was not transcribed: {result.failures}")
        t = pl.read_parquet(f"{out}/transcripts/*.parquet").row(0, named=True)
        segments = pl.read_parquet(f"{out}/segments/*.parquet")
    hypothesis = [(r["start"], r["end"], r["speaker"]) for r in segments.iter_rows(named=True)]
    error = der.der(reference, hypothesis, collar=0.25)
    baseline = der.der(reference, der.one_speaker_baseline(reference), collar=0.25)
    print(f"long_diarization: {len(audio) / 16000 / 60:.1f} min, {len(reference)} reference turns, "
          f"upload_mode {t['upload_mode']}, speakers found {segments['speaker'].n_unique()} "
          f"({', '.join(sorted(segments['speaker'].unique()))}), wall {wall:.0f} s")
    print(f"DER {error:.2%} (goal <= 15%), one-speaker DER {baseline:.2%}")
    print(f"ratio={error / baseline:.3f}")
    return 0 if t["upload_mode"] == "chunks" else 1


if __name__ == "__main__":
    sys.exit(main())
