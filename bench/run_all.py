"""Every benchmark in bench/, one after the other, and a table of each ratio against its goal.

Run:  .venv/bin/python bench/run_all.py [NAME ...] [--skip NAME ...]     (what `make bench` runs)

Each benchmark runs as its own process (`python bench/NAME.py`, no arguments: its
defaults are its goal's conditions), in its own process group, with a time limit; its
whole output goes to a log file, and its `ratio=` line (the last line a benchmark
prints) is shown as it comes. A benchmark fails when it exits non-zero, prints no
`ratio=`, runs out of time, or misses its goal; the others still run, and the exit
status is 1 when any failed (the table says which and why; the log has the details).

Goals are kept here, as the benchmarks and the issues state them. A benchmark found in
bench/ with no goal listed here still runs and shows its ratio, marked "no goal".
"""

from __future__ import annotations

import argparse
import operator
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
}


@dataclass(frozen=True)
class Goal:
    op: str
    value: float

    def met(self, x: float) -> bool:
        return _OPS[self.op](x, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Spec:
    """What a benchmark must show: its ratio's goal, and goals on other `key=value` lines."""

    ratio: Goal | None
    timeout_s: float = 3600.0
    extra: dict[str, Goal] = field(default_factory=dict)
    note: str = ""


#: In the order they run: quick ones first, the 100,000-file run last.
SPECS: dict[str, Spec] = {
    "discovery": Spec(Goal("<=", 1.3), 1800),
    "parquet_write": Spec(Goal("<=", 1.2), 1800),
    "compact": Spec(Goal(">=", 5), 1800, note="compact_vs_bare <= 1.5 is printed above its ratio"),
    "pipeline_overhead": Spec(Goal(">=", 0.9), 1800),
    "server_overhead": Spec(Goal(">=", 0.95), 3600),
    "short_clips": Spec(Goal(">=", 3), 9000, note="and the WER must not grow by more than 0.5 points"),
    "server_memory": Spec(Goal("<=", 1.5), 3600),
    "async_diarization": Spec(Goal(">", 0.67), 3600),
    "der": Spec(Goal("<=", 0.5), 3600, note="and every file below its own one-speaker baseline"),
    "word_timing": Spec(None, 3600, note="ratio = diarization / transcription wall time on the same audio; no goal stated"),
    "long_diarization": Spec(None, 5400, note="its goal is on the DER printed above (<= 15 %), not the ratio"),
    "backfill": Spec(Goal("<=", 1.25), 3600),
    "scale": Spec(Goal("<=", 1.2), 7200, extra={"peak_rss_mb": Goal("<", 500)}),
}
_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=([-+0-9.eE]+|nan|inf)\s*$")


@dataclass
class Result:
    name: str
    spec: Spec
    log: Path
    seconds: float = 0.0
    ratio: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    problem: str | None = None  # why it failed; None when it met its goals

    @property
    def verdict(self) -> str:
        if self.problem:
            return "FAILED"
        return "met" if self.spec.ratio is not None else "no goal"


def benchmarks(only: list[str], skip: list[str]) -> list[str]:
    """The benchmarks present in bench/ (scripts, not helper modules such as conversation.py):
    those listed in SPECS in its order, any others before scale."""
    present = sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem != "run_all" and _is_script(p))
    unknown = [n for n in only if n not in present]
    if unknown:
        raise SystemExit(f"run_all: no benchmark named {', '.join(unknown)} in {BENCH_DIR}")
    last = ["scale"] if "scale" in present else []  # the longest, after any benchmark not listed
    ordered = [n for n in SPECS if n in present and n not in last] + [n for n in present if n not in SPECS] + last
    return [n for n in ordered if (not only or n in only) and n not in skip]


def _is_script(path: Path) -> bool:
    return not path.stem.startswith("_") and 'if __name__ == "__main__":' in path.read_text(errors="replace")


def run_one(name: str, logs: Path) -> Result:
    spec = SPECS.get(name, Spec(None, note="not listed in bench/run_all.py"))
    result = Result(name, spec, logs / f"{name}.log")
    print(f"== {name} (time limit {_minutes(spec.timeout_s)}, log {result.log})", flush=True)
    t0 = time.perf_counter()
    with open(result.log, "w") as log:
        proc = subprocess.Popen([sys.executable, str(BENCH_DIR / f"{name}.py")], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # the log fills as it runs
        timed_out = _watch(proc, log, result, spec.timeout_s)
    result.seconds = time.perf_counter() - t0
    result.problem = _problem(result, proc.returncode, timed_out)
    if result.problem:
        print(f"   {name}: FAILED: {result.problem}", flush=True)
        print("   last lines of its output:\n" + _tail(result.log, 15).rstrip("\n"), flush=True)
    return result


def _watch(proc: subprocess.Popen[str], log: IO[str], result: Result, timeout_s: float) -> bool:
    """Copy the output to the log, pick up key=value lines; kill the group when time is up."""
    deadline = time.monotonic() + timeout_s
    timed_out = False

    def kill() -> None:
        nonlocal timed_out
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            m = _KEY_VALUE.match(line.strip())
            if m:
                result.values[m.group(1)] = float(m.group(2))
                print(f"   {line.strip()}", flush=True)
        proc.wait()
    finally:
        timer.cancel()
    return timed_out


def _problem(r: Result, code: int | None, timed_out: bool) -> str | None:
    if timed_out:
        return f"killed after its time limit of {_minutes(r.spec.timeout_s)}"
    if code != 0:
        return f"exit code {code}"
    r.ratio = r.values.get("ratio")
    if r.ratio is None:
        return "printed no ratio= line"
    if r.spec.ratio is not None and not r.spec.ratio.met(r.ratio):
        return f"ratio {r.ratio:g} misses its goal {r.spec.ratio}"
    for key, goal in r.spec.extra.items():
        value = r.values.get(key)
        if value is None:
            return f"printed no {key}= line"
        if not goal.met(value):
            return f"{key} {value:g} misses its goal {goal}"
    return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.3g} min"


def _tail(path: Path, n: int) -> str:
    if not path.exists():
        return ""
    return "".join("   | " + line for line in path.read_text(errors="replace").splitlines(keepends=True)[-n:])


def print_table(results: list[Result]) -> None:
    print()
    print(f"{'benchmark':20} {'ratio':>9} {'goal':>8} {'verdict':>8} {'minutes':>8}  notes")
    for r in results:
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        goal = str(r.spec.ratio) if r.spec.ratio else "-"
        extra = ", ".join(f"{k}={r.values[k]:g} (goal {g})" for k, g in r.spec.extra.items()
                          if k in r.values and k not in (r.problem or ""))
        notes = "; ".join(x for x in (r.problem, extra, r.spec.note) if x)
        print(f"{r.name:20} {ratio:>9} {goal:>8} {r.verdict:>8} {r.seconds / 60:8.1f}  {notes}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("only", nargs="*", help="run only these benchmarks (default: every one in bench/)")
    p.add_argument("--skip", action="append", default=[], help="leave this benchmark out (repeatable)")
    args = p.parse_args()
    names = benchmarks(args.only, args.skip)
    logs = Path(tempfile.mkdtemp(prefix="bulkscribe-bench-"))
    print(f"run_all: {len(names)} benchmark(s): {', '.join(names)}; logs in {logs}", flush=True)
    results = [run_one(name, logs) for name in names]
    print_table(results)
    failed = [r.name for r in results if r.problem]
    if failed:
        print(f"\nmake bench: FAILED: {', '.join(failed)} (see the notes above and the logs in {logs})")
        return 1
    print(f"\nmake bench: every benchmark printed its ratio; goals met where stated (logs in {logs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
