"""Issue 12: the embedded server's peak memory does not grow with the length of a file.

Run:  .venv/bin/python bench/server_memory.py [--long-min 120] [--short-min 10] [--model Wizper]
                                              [--legacy]

Two WAV files (16 kHz mono) are generated at run time in a temp dir: `--short-min`
(default 10) and `--long-min` (default 120) minutes of English speech, the shared clips
with known references (jfk, timit, librispeech, pyannote_sample, leopard_diarization_3spk)
one after another in a shuffled order, each at its own gain, with pauses of 0.5-3 s
between them. Each file is sent by `audioUrl` (served on 127.0.0.1 by a thread of this
process) to a fresh embedded server, synchronously (`--model`, default Wizper; language
en), and the server process's peak RSS (VmHWM in /proc, the kernel's high-water mark
since the process started) is read after its answer. A fresh server per file, so each
peak is that file's. `--legacy` adds the old code path (whole-file decode) for the short
file, for comparison (on the long one it needs several GB).

Printed per file: its duration and size, the server's RSS when ready (model loaded) and
its peak during the request, the request's wall time, and the transcript's word error
rate against the concatenated references (so that pieces and their seams are seen not to
lose or double words); then, as the very last line,
`ratio=<peak RSS long / peak RSS short, 3 decimals>` (goal <= 1.5).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import wer  # noqa: E402
from stt.server.audio import SAMPLE_RATE, decode  # noqa: E402
from stt.server.launcher import EmbeddedServer, allow_entry  # noqa: E402

AUDIO_DIR = REPO_ROOT.parent / "shared" / "audio"
CLIPS = ("jfk_inaugural.flac", "timit_LDC93S1.wav", "librispeech_1995-1837-0001.wav", "pyannote_sample.wav",
         "leopard_diarization_3spk.wav")


@dataclass
class Speech:
    path: Path
    minutes: float
    reference: str


def build(path: Path, minutes: float, seed: int) -> Speech:
    """Write `minutes` of shuffled clips and pauses to a WAV, block by block."""
    manifest = {e["file"]: e for e in json.loads((AUDIO_DIR / "manifest.json").read_text())}
    clips = [(decode(str(AUDIO_DIR / name)), manifest[name]["reference"]) for name in CLIPS]
    rng = np.random.default_rng(seed)
    target = int(minutes * 60 * SAMPLE_RATE)
    written, references = 0, []
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        while written < target:
            samples, text = clips[int(rng.integers(len(clips)))]
            pause = rng.standard_normal(int(rng.uniform(0.5, 3.0) * SAMPLE_RATE)) * 1e-3
            block = np.concatenate([samples * rng.uniform(0.6, 1.0), pause])
            w.writeframes((np.clip(block, -1, 1) * 32767).astype("<i2").tobytes())
            written += len(block)
            references.append(text)
    return Speech(path, written / SAMPLE_RATE / 60, " ".join(references))


def rss_mb(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


class FileServer:
    """Serves a folder on 127.0.0.1 (the audioUrl side)."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


def measure(label: str, speech: Speech, files: FileServer, model: str, engine_path: str) -> float:
    env = {"BULKSCRIBE_SERVER_ENGINE_PATH": engine_path}
    with EmbeddedServer(env=env, url_allowlist=[allow_entry(files.url)]) as srv:
        assert srv.pid is not None
        ready = rss_mb(srv.pid, "VmRSS")
        started = time.perf_counter()
        resp = httpx.post(f"{srv.api_url}/transcribe", headers={"x-api-key": srv.api_key},
                          json={"audioUrl": f"{files.url}/{speech.path.name}", "model": model, "language": "en"},
                          timeout=None, trust_env=False)
        wall = time.perf_counter() - started
        peak = rss_mb(srv.pid, "VmHWM")
    if resp.status_code != 200:
        sys.exit(f"{label}: HTTP {resp.status_code} {resp.text[:500]}")
    text = resp.json()["transcription"]
    print(f"{label:22} {speech.minutes:6.1f} min {speech.path.stat().st_size / 1e6:7.1f} MB | RSS ready "
          f"{ready:6.0f} MB, peak {peak:6.0f} MB (+{peak - ready:5.0f}) | {wall:6.1f} s "
          f"({speech.minutes * 60 / wall:5.1f}x real time) | WER {wer(speech.reference, text) * 100:5.2f} % "
          f"({len(text.split())} words)", flush=True)
    return peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short-min", type=float, default=10.0)
    p.add_argument("--long-min", type=float, default=120.0)
    p.add_argument("--model", default="Wizper", choices=("Wizper", "Whisper-Large-V3"))
    p.add_argument("--legacy", action="store_true", help="also measure the old path on the short file")
    args = p.parse_args(argv)
    print(f"cores={os.cpu_count()} model={args.model} loadavg={os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bulkscribe-memory-") as tmp:
        folder = Path(tmp)
        short = build(folder / "short.wav", args.short_min, seed=1)
        long = build(folder / "long.wav", args.long_min, seed=2)
        files = FileServer(folder)
        try:
            if args.legacy:
                measure("short, legacy path", short, files, args.model, "legacy")
            peak_short = measure("short", short, files, args.model, "fast")
            peak_long = measure("long", long, files, args.model, "fast")
        finally:
            files.close()
    print(f"ratio={peak_long / peak_short:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
