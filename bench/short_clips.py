"""Issue 10: an archive of short clips and files without speech, through `bulkscribe run`.

Run:  .venv/bin/python bench/short_clips.py [--files 1000] [--speech-fraction 0.5] [--seed 0]

The clips are generated at run time in a temp dir (nothing is committed), as 16 kHz mono WAV:
  speech (2-10 s): a clip of the shared speech set whose reference text is known and
      that lasts 2-10 s (timit, librispeech, aishell, ru, leopard de/es/fr/ja), or a span
      of whole utterances of pyannote_sample.wav cut in the pauses between them (its
      reference: the STM's texts of those utterances). Each copy gets its own gain
      (0.5-1.0), leading and trailing pause (0-0.3 s) and a -70 dBFS dither, so no two
      files are the same bytes.
  no speech (0.5-5 s): digital silence (dithered), room noise (white, -55 to -40 dBFS),
      brown noise, 50/60 Hz mains hum with harmonics, line noise (clicks and crackle),
      in turn.
Both runs send the same files with `bulkscribe run DIR --out OUT --language auto`
(default model Whisper-Large-V3, beam 5) against the embedded server it starts itself:
  before: BULKSCRIBE_SERVER_ENGINE_PATH=legacy (faster-whisper's transcribe() on the
          whole decoded file, one request at a time: the code path before issue 10);
  after:  BULKSCRIBE_SERVER_ENGINE_PATH=fast (the default).
The wall time of each `bulkscribe run` is measured whole (start-up of Prefect and of the
server included, ~20 s) and, separately, from the first to the last transcript the run
recorded (`transcribed_at`), the part that grows with the number of files.

Printed: for each run files/s (whole run and transcribing), the embedded server's CPU
seconds per file (sampled from /proc: less disturbed than wall time when other processes
load the machine), failures, the speech clips' mean word error rate against their references (characters for zh/ja, after lower-casing
and stripping punctuation) and how many no-speech files got any text; then the
number of speech clips whose text differs between the runs, and as the very last line
`ratio=<after/before files/s over the whole run, 3 decimals>` (goal >= 3; the WER must
not grow by more than 0.5 points).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._common import wer, write_wav  # noqa: E402
from stt.server.audio import SAMPLE_RATE, decode  # noqa: E402

AUDIO_DIR = REPO_ROOT.parent / "shared" / "audio"
WHOLE_CLIPS = ("timit_LDC93S1.wav", "librispeech_1995-1837-0001.wav", "aishell_BAC009S0724W0121.wav",
               "ru_deepspeech_sample.wav", "leopard_test_de.wav", "leopard_test_es.wav", "leopard_test_fr.wav",
               "leopard_test_ja.wav")
CONVERSATION = "pyannote_sample.wav"
NOISES = ("silence", "room", "brown", "hum", "line")


@dataclass
class Source:
    samples: np.ndarray
    reference: str
    language: str


@dataclass
class Clip:
    name: str
    source: Source | None  # None: no speech


def speech_sources() -> list[Source]:
    manifest = {e["file"]: e for e in json.loads((AUDIO_DIR / "manifest.json").read_text())}
    sources = [Source(decode(str(AUDIO_DIR / f)), manifest[f]["reference"], manifest[f]["language"])
               for f in WHOLE_CLIPS]
    return sources + conversation_spans()


def conversation_spans() -> list[Source]:
    """Runs of whole STM utterances lasting 2-10 s, cut in pauses of at least 0.1 s."""
    audio = decode(str(AUDIO_DIR / CONVERSATION))
    rows = [line.split(maxsplit=5) for line in (AUDIO_DIR / CONVERSATION).with_suffix(".stm").read_text().splitlines()]
    utts = [(float(r[3]), float(r[4]), r[5]) for r in rows if len(r) == 6]
    spans: list[Source] = []
    for i in range(len(utts)):
        gap_before = utts[i][0] - (utts[i - 1][1] if i else 0.0)
        for j in range(i, len(utts)):
            gap_after = (utts[j + 1][0] if j + 1 < len(utts) else len(audio) / SAMPLE_RATE) - utts[j][1]
            start, end = utts[i][0] - min(0.2, gap_before / 2), utts[j][1] + min(0.2, gap_after / 2)
            if end - start > 10:
                break
            if end - start >= 2 and gap_before >= 0.1 and gap_after >= 0.1:
                text = " ".join(u[2] for u in utts[i:j + 1])
                spans.append(Source(audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)], text, "en"))
    return spans


def noise(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if kind == "silence":
        return np.zeros(n)
    if kind == "room":
        return rng.standard_normal(n) * 10 ** (rng.uniform(-55, -40) / 20)
    if kind == "brown":
        walk = np.cumsum(rng.standard_normal(n))
        walk -= np.convolve(walk, np.ones(1601) / 1601, mode="same")  # no drift
        return walk / (np.abs(walk).max() + 1e-9) * 10 ** (rng.uniform(-45, -35) / 20)
    if kind == "hum":
        f0 = rng.choice([50.0, 60.0])
        return sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3, 5)) * 0.01
    clicks = (rng.random(n) < 0.002) * rng.standard_normal(n) * 0.2  # line noise: clicks and crackle
    return clicks + rng.standard_normal(n) * 10 ** (rng.uniform(-60, -50) / 20)


def make_corpus(folder: Path, count: int, speech_fraction: float, seed: int) -> list[Clip]:
    rng = np.random.default_rng(seed)
    sources = speech_sources()
    clips: list[Clip] = []
    for i in range(count):
        if rng.random() < speech_fraction:
            src = sources[int(rng.integers(len(sources)))]
            pads = [np.zeros(int(rng.uniform(0, 0.3) * SAMPLE_RATE)) for _ in range(2)]
            audio = np.concatenate([pads[0], src.samples * rng.uniform(0.5, 1.0), pads[1]])
            clip = Clip(f"speech_{i:05d}.wav", src)
        else:
            audio = noise(NOISES[i % len(NOISES)], rng.uniform(0.5, 5.0), rng)
            clip = Clip(f"nospeech_{i:05d}_{NOISES[i % len(NOISES)]}.wav", None)
        audio = audio + rng.standard_normal(len(audio)) * 10 ** (-70 / 20)
        write_wav(folder / clip.name, audio, SAMPLE_RATE)
        clips.append(clip)
    return clips


@dataclass
class Run:
    label: str
    wall_s: float
    transcribing_s: float
    server_cpu_s: float
    texts: dict[str, str]
    failures: int


def _servers(pid: int) -> list[int]:
    """The embedded STT servers `pid` started (not its Prefect API server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == pid and b"stt.server" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(label: str, engine_path: str, folder: Path, out: Path) -> Run:
    """One `bulkscribe run`; the CPU time of the server it starts is sampled twice a second
    (a measure that the load of other processes on a shared machine disturbs less than wall time)."""
    env = {**os.environ, "BULKSCRIBE_SERVER_ENGINE_PATH": engine_path}
    cmd = [str(REPO_ROOT / ".venv" / "bin" / "bulkscribe"), "run", str(folder), "--out", str(out), "--language", "auto"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server_cpu: dict[int, float] = {}
    while proc.poll() is None:
        for child in _servers(proc.pid):
            if (cpu := _cpu_s(child)) is not None:
                server_cpu[child] = cpu
        time.sleep(0.5)
    output = proc.stdout.read() if proc.stdout else ""
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{label}: bulkscribe run exited {proc.returncode}\n{output[-3000:]}")
    import polars as pl

    table = pl.read_parquet(str(out / "transcripts" / "**" / "*.parquet"))
    failures = list(out.glob("failures/**/*.parquet"))
    failed = pl.read_parquet([str(f) for f in failures]).height if failures else 0
    stamps = table["transcribed_at"].sort()
    span = (stamps[-1] - stamps[0]).total_seconds() if table.height > 1 else wall
    texts = {Path(s).name: (t or "") for s, t in zip(table["source"], table["text"])}
    return Run(label, wall, span, sum(server_cpu.values()), texts, failed)


def report(run: Run, clips: list[Clip]) -> float:
    speech = [c for c in clips if c.source is not None]
    errors = [wer(c.source.reference, run.texts.get(c.name, ""), c.source.language) for c in speech if c.source]
    talking_noise = sum(1 for c in clips if c.source is None and run.texts.get(c.name, "").strip())
    mean_wer = statistics.mean(errors) if errors else 0.0
    print(f"{run.label:7} files/s {len(clips) / run.wall_s:6.2f} whole run ({run.wall_s:7.1f} s), "
          f"{len(clips) / run.transcribing_s:6.2f} transcribing ({run.transcribing_s:7.1f} s); server CPU "
          f"{run.server_cpu_s / len(clips):5.2f} s per file; "
          f"transcribed {len(run.texts)}, failed {run.failures}; speech WER {mean_wer * 100:5.2f} % "
          f"over {len(errors)} clips; no-speech files with text: {talking_noise}")
    return mean_wer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--speech-fraction", type=float, default=0.5, help="share of speech clips (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bulkscribe-short-clips-") as tmp:
        folder = Path(tmp) / "archive"
        folder.mkdir()
        clips = make_corpus(folder, args.files, args.speech_fraction, args.seed)
        n_speech = sum(1 for c in clips if c.source is not None)
        print(f"{len(clips)} files: {n_speech} speech (2-10 s), {len(clips) - n_speech} without speech (0.5-5 s); "
              f"cores={os.cpu_count()} loadavg={os.getloadavg()[0]:.2f}", flush=True)
        before = run_cli("before", "legacy", folder, Path(tmp) / "out-before")
        wer_before = report(before, clips)
        after = run_cli("after", "fast", folder, Path(tmp) / "out-after")
        wer_after = report(after, clips)
    differ = sum(1 for c in clips if c.source is not None and before.texts.get(c.name) != after.texts.get(c.name))
    print(f"speech clips whose text differs between the runs: {differ} of {n_speech}; "
          f"WER change {(wer_after - wer_before) * 100:+.2f} points (limit +0.50)")
    print(f"transcribing-phase ratio: {before.transcribing_s / after.transcribing_s:.3f}; server CPU ratio "
          f"{before.server_cpu_s / max(after.server_cpu_s, 1e-9):.3f}; loadavg now {os.getloadavg()[0]:.2f}")
    print(f"ratio={before.wall_s / after.wall_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
