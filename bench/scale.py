"""An archive of 100,000 tiny files through `bulkscribe run`: does the time per file stay
flat, and the run's memory bounded, as the archive grows tenfold?

Run:  .venv/bin/python bench/scale.py [--files 100000] [--workdir DIR]

The files are made at run time in a temp dir (nothing is committed): `--files` distinct
0.3 s 16 kHz mono WAVs (~9.6 kB each; one clip of quiet noise, six samples of each copy
nudged so that every file has its own bytes, content hash and request key), 1,000 per
folder. The first tenth sits under SOURCE/small/.

Three runs, same settings, one after the other, each a fresh OUT and its own process
(the small one before and after the large one, so that drift in the load of this shared
machine weighs on both sizes alike):

  small  `bulkscribe run SOURCE/small --out OUT1 --language en`   (--files / 10 files)
  large  `bulkscribe run SOURCE --out OUT2 --language en`         (--files files)
  small  again, into OUT3

Each is the real command (the `flows.cli` entry point in a child process): it starts its
own temporary Prefect API and its own embedded server, here with the fake engine
(BULKSCRIBE_SERVER_ENGINE=fake: real decoding, billing and SQLite, invented words), so
the pipeline and not Whisper is what is measured. Default batch size, concurrency and
parallel batches. PREFECT_HOME is a private temp dir (the run's own Prefect database).

Measured per run: its wall time (process start to exit, start-ups included), the span
between its first and last transcripts (`transcribed_at` in its transcripts table: the
steady state, start-ups excluded), the time per file in successive tenths of the
large run, and the peak RSS (VmHWM) of the flow process itself (written at its exit;
the Prefect API and the STT server are processes of their own, not counted), with
its RSS sampled as the run goes.

Printed last: `ratio=<per-file time large / small>` (goal <= 1.2; small: the mean of its
two runs), the worse of the wall-time and the steady-state ratios; before it
`peak_rss_mb=` of the large run (goal < 500 MB).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from bench._common import BenchError, distinct_copy, require, run_main, wav_bytes  # noqa: E402

RATIO_GOAL = 1.2
RSS_GOAL_MB = 500.0
SAMPLE_RATE = 16_000
CLIP_S = 0.3
PER_FOLDER = 1000

#: The flow process: the `bulkscribe` command, writing its own peak RSS when it exits.
_DRIVER = textwrap.dedent("""
    import atexit, os, sys
    sys.path.insert(0, {repo!r})

    def _peak():
        with open("/proc/self/status") as f:
            hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        with open(os.environ["BULKSCRIBE_BENCH_PEAK_FILE"], "w") as f:
            f.write(hwm)

    atexit.register(_peak)
    from flows.cli import main
    sys.exit(main(sys.argv[1:]))
""")
_PROGRESS = re.compile(r"bulkscribe: (\d+)/(\d+) files")


def make_archive(root: Path, n: int) -> Path:
    """n distinct WAVs under root (see the module docstring); returns the small subset's folder."""
    rng = np.random.default_rng(11)
    clip = rng.normal(0.0, 60.0, int(SAMPLE_RATE * CLIP_S)).astype(np.int16)  # quiet noise
    small = root / "small"
    n_small = max(1, n // 10)
    folder = root
    base_ns = time.time_ns() - 10**12
    for i in range(n):
        if i % PER_FOLDER == 0 or i == n_small:
            parent = small if i < n_small else root / "large"
            folder = parent / f"d{i // PER_FOLDER:04d}"
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"clip_{i:06d}.wav"
        path.write_bytes(wav_bytes(distinct_copy(clip, i), SAMPLE_RATE))
        os.utime(path, ns=(base_ns + i * 1000, base_ns + i * 1000))
    return small


@dataclass
class RunResult:
    name: str
    files: int
    wall_s: float
    peak_rss_mb: float
    first_last_s: float
    done_times: np.ndarray  # seconds since the first transcript, sorted
    #: (seconds since start, files done per the last progress line, RSS MB)
    samples: list[tuple[float, int, float]] = field(default_factory=list)

    @property
    def per_file_wall_ms(self) -> float:
        return 1000 * self.wall_s / self.files

    @property
    def per_file_steady_ms(self) -> float:
        return 1000 * self.first_last_s / max(1, self.files - 1)


class RssSampler(threading.Thread):
    """Samples the flow process's RSS once a second, next to the files it reported done."""

    def __init__(self, pid: int, t0: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.t0 = pid, t0
        self.done = 0
        self.samples: list[tuple[float, int, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                return
            self.samples.append((time.perf_counter() - self.t0, self.done, rss / 1024))


def run_flow(name: str, source: Path, out: Path, n: int, work: Path, timeout_s: float) -> RunResult:
    """`bulkscribe run` in a child process, watched; its tables checked afterwards."""
    peak_file = work / f"{name}.peak"
    log_path = work / f"{name}.log"
    env = {**os.environ, "BULKSCRIBE_SERVER_ENGINE": "fake", "PREFECT_HOME": str(work / f"prefect-{name}"),
           "BULKSCRIBE_BENCH_PEAK_FILE": str(peak_file), "BULKSCRIBE_PROGRESS": "lines",
           "BULKSCRIBE_PROGRESS_INTERVAL_S": "30", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-c", _DRIVER.format(repo=str(REPO_ROOT)), "run", str(source), "--out", str(out),
           "--language", "en"]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, cwd=str(work))
        sampler = RssSampler(proc.pid, t0)
        sampler.start()
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                m = _PROGRESS.search(line)
                if m:
                    sampler.done = int(m.group(1))
                    print(f"  {name}: {line.strip()}  [{time.perf_counter() - t0:.0f} s, "
                          f"RSS {sampler.samples[-1][2] if sampler.samples else 0:.0f} MB]", flush=True)
            code = proc.wait()
        finally:
            killer.cancel()
            sampler.stopped.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        why = f"killed after {timeout_s:.0f} s" if wall >= timeout_s else f"exit code {code}"
        raise BenchError(f"the {name} run failed ({why}); the end of its output:\n{tail}")
    return RunResult(name, n, wall, _peak_mb(peak_file), *_done_times(out, n), samples=sampler.samples)


def _peak_mb(path: Path) -> float:
    try:
        return int(path.read_text()) / 1024
    except (OSError, ValueError):
        raise BenchError(f"the flow process did not write its peak RSS to {path}") from None


def _done_times(out: Path, n: int) -> tuple[float, np.ndarray]:
    """(span first->last transcript, sorted completion times since the first)."""
    from tasks import tables

    failures = tables.read_table(str(out), "failures", columns=["source", "message"])
    if failures.num_rows:
        raise BenchError(f"{failures.num_rows} file(s) failed, e.g. {failures.slice(0, 3).to_pylist()}")
    t = tables.read_table(str(out), "transcripts", columns=["transcribed_at"]).column("transcribed_at")
    if len(t) != n:
        raise BenchError(f"{len(t)} transcripts under {out}, expected {n}")
    us = np.sort(t.cast("int64").to_numpy())
    secs = (us - us[0]) / 1e6
    return float(secs[-1]), secs


def print_run(r: RunResult) -> None:
    print(f"{r.name:7} {r.files:>8} files: wall {r.wall_s:8.1f} s = {r.per_file_wall_ms:6.2f} ms/file; first->last "
          f"transcript {r.first_last_s:8.1f} s = {r.per_file_steady_ms:6.2f} ms/file; flow process peak RSS "
          f"{r.peak_rss_mb:6.1f} MB")


def print_tenths(r: RunResult) -> None:
    """Per-file time in each tenth of the run's files (by completion order), and the RSS then."""
    print(f"{r.name} run by tenths of its files (completion order): ms/file, RSS of the flow process when "
          "that many files were reported done")
    edges = np.linspace(0, r.files - 1, 11).astype(int)
    for k in range(10):
        a, b = edges[k], edges[k + 1]
        ms = 1000 * (r.done_times[b] - r.done_times[a]) / max(1, b - a)
        rss = [s[2] for s in r.samples if s[1] <= b]
        print(f"  files {a:>7}-{b:>7}: {ms:6.2f} ms/file, RSS {rss[-1] if rss else float('nan'):6.1f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100_000, help="files in the large run (default 100,000); "
                                                              "the small run has a tenth")
    p.add_argument("--workdir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    p.add_argument("--timeout-per-file-s", type=float, default=0.06,
                   help="a run is killed after 300 s + this x its files (default 0.06: 8x the expected time)")
    args = p.parse_args()
    if args.files < 100:
        raise BenchError("--files must be at least 100")
    require("flows.cli", "stt.server.fake_engine", hint="run from the repository with its venv: make bench")

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        small = make_archive(work / "archive", args.files)
        n_small = max(1, args.files // 10)
        print(f"scale: {args.files} files made in {time.perf_counter() - t0:.0f} s under {work}; fake engine, "
              f"language en, default batch size/concurrency; cores {os.cpu_count()}, "
              f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
        runs = []
        for name in ("small", "large", "small-2"):
            n = args.files if name == "large" else n_small
            runs.append(run_flow(name, work / "archive" if name == "large" else small, work / f"out-{name}", n,
                                 work, 300 + args.timeout_per_file_s * n))
            print_run(runs[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    large_run, smalls = runs[1], (runs[0], runs[2])
    print()
    print_tenths(large_run)
    small_wall = statistics.mean(r.per_file_wall_ms for r in smalls)
    small_steady = statistics.mean(r.per_file_steady_ms for r in smalls)
    wall_ratio = large_run.per_file_wall_ms / small_wall
    steady_ratio = large_run.per_file_steady_ms / small_steady
    ok = max(wall_ratio, steady_ratio) <= RATIO_GOAL and large_run.peak_rss_mb < RSS_GOAL_MB
    print()
    print(f"per-file time {args.files} files vs {n_small} (mean of its two runs: wall {small_wall:.2f} ms, steady "
          f"{small_steady:.2f} ms): wall {wall_ratio:.3f}, steady state {steady_ratio:.3f}; flow process peak RSS "
          f"{large_run.peak_rss_mb:.1f} MB at {args.files} files ({max(r.peak_rss_mb for r in smalls):.1f} MB at "
          f"{n_small})")
    print(f"goals: ratio <= {RATIO_GOAL}, peak RSS < {RSS_GOAL_MB:.0f} MB -> {'met' if ok else 'NOT met'}; "
          f"total {time.perf_counter() - started:.0f} s, loadavg now {os.getloadavg()[0]:.2f}")
    print(f"peak_rss_mb={large_run.peak_rss_mb:.1f}")
    print(f"ratio={max(wall_ratio, steady_ratio):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
