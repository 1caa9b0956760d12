"""The words table through the pipeline's own code against bare pyarrow doing the same job.

Run:  .venv/bin/python bench/parquet_write.py [--rows 1000000] [--repeat 5]

The data: one batch of `--rows` words from ~rows/500 files (300-700 words each, local
paths of a dated archive, in random order as a batch's files finish), each file's words
parsed from an API answer exactly as the client parses it
(`stt.contract.StatusResponse.model_validate(payload).words`, a list of pydantic
`stt.contract.Word`), held in the flow's `tasks.rows.FileWords`. Words alternate with
" " spacings (type word/spacing), times increase, speakers change in turns, the texts
come from a Zipf-like vocabulary. Model "Elevenlabs-STT" (the model that returns words).

Measured in one run, `--repeat` repetitions, the sides interleaved, their order rotated
each repetition so that the noise of a shared machine hits all alike; medians:

  pipeline  build: `tasks.rows.words_table(file_words)` (what `tasks.batch.write_outcomes`
            calls); write: `tasks.tables.write_part(out, "words", table, part_name=...)`
            (schema check, source-order check or sort, zstd, 128k-row groups with
            statistics and sorting metadata, temporary name + rename); read:
            `tasks.tables.read_table(out, "words")` (part listing, compaction log, read).
  bare      build: the nine columns from the same FileWords with plain list
            comprehensions (`[w.text for f in files for w in f.words]`, one per column,
            per-file values repeated per word, word_index from range), then
            `pa.table(columns, schema=WORDS)`; write: `pq.write_table(table, path,
            compression="zstd")` (pyarrow's defaults otherwise: no sort, 1M-row groups);
            read: `pq.read_table(path)`.
  table     informative: a ready `pa.Table` (the bare side's, in source order as
            words_table gives it) through write_part + read_table, against the bare
            side's write + read (the file-format part alone, building excluded).

The ratio that counts, printed as the very last line `ratio=<value>` (goal <= 1.2), is
pipeline (build + write + read) over bare (build + write + read). Both read back the same
rows (the pipeline's sorted by source; checked on the first repetition).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench._common import BenchError, run_main  # noqa: E402
from stt.contract import StatusResponse  # noqa: E402
from tasks import tables  # noqa: E402
from tasks.rows import WORDS, FileWords, words_table  # noqa: E402

RATIO_GOAL = 1.2
MODEL = "Elevenlabs-STT"
VOCAB = ("the", "a", "and", "to", "of", "I", "you", "it", "is", "that", "we", "so", "yes", "no", "okay",
         "call", "order", "account", "number", "please", "thank", "hello", "right", "well", "just", "can",
         "will", "have", "not", "this", "on", "for", "with", "my", "your", "be", "do", "what", "about", "there",
         "customer", "service", "payment", "today", "week", "delivery", "address", "check", "moment", "sure")
SIDES = ("pipeline", "bare", "table")
PHASES = ("build", "write", "read")


def make_batch(n_rows: int, seed: int = 7) -> list[FileWords]:
    """The words of a batch's files as the flow holds them (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_sources = max(1, round(n_rows / 500))
    counts = rng.integers(300, 701, n_sources)
    counts = np.maximum(1, np.round(counts * n_rows / counts.sum()).astype(int))
    counts[-1] = max(1, counts[-1] + n_rows - counts.sum())
    vocab = list(VOCAB) + [f"w{i}" for i in range(2000)]  # plus rarer words (names, numbers...)
    vocab_p = np.r_[np.full(len(VOCAB), 0.7 / len(VOCAB)), np.full(2000, 0.3 / 2000)]
    files = []
    for s in rng.permutation(n_sources):
        n = int(counts[s])
        day = s % 365
        url = f"/srv/archive/2024/{day // 31 + 1:02d}/{day % 31 + 1:02d}/call_{s:06d}.wav"
        fingerprint = f"local:{int(rng.integers(200_000, 9_000_000))}:{1_700_000_000_000_000_000 + s * 7919}"
        word_ids = rng.choice(len(vocab), size=n, p=vocab_p)
        durations = rng.uniform(0.08, 0.6, n)
        starts = np.cumsum(rng.uniform(0.0, 0.25, n) + np.r_[0.0, durations[:-1]])
        speaker_turn = np.cumsum(rng.random(n) < 0.02) % 4  # a new speaker every ~50 words
        payload = {"status": "completed", "transcription": "", "words": [
            {"text": vocab[word_ids[i]] if i % 2 == 0 else " ", "start": round(float(starts[i]), 3),
             "end": round(float(starts[i] + durations[i]), 3), "type": "word" if i % 2 == 0 else "spacing",
             "speaker_id": f"speaker_{speaker_turn[i]}"} for i in range(n)]}
        words = StatusResponse.model_validate(payload).words or []
        files.append(FileWords(url, fingerprint, MODEL, words))
    return files


def bare_table(files: list[FileWords]) -> pa.Table:
    """The columns with plain list comprehensions, then pa.table."""
    columns = {
        "source": [f.source for f in files for _ in f.words],
        "fingerprint": [f.fingerprint for f in files for _ in f.words],
        "model": [f.model for f in files for _ in f.words],
        "word_index": [i for f in files for i in range(len(f.words))],
        "text": [w.text for f in files for w in f.words],
        "start": [w.start for f in files for w in f.words],
        "end": [w.end for f in files for w in f.words],
        "type": [w.type for f in files for w in f.words],
        "speaker": [w.speaker_id for f in files for w in f.words],
    }
    return pa.table(columns, schema=WORDS)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


class Sides:
    """Runs each side once into a clean folder, recording its phase times."""

    def __init__(self, files: list[FileWords], work: Path) -> None:
        self.files, self.work = files, work
        self.ready = bare_table(files).sort_by("source")  # the `table` side's input
        self.times: dict[str, dict[str, list[float]]] = {s: {p: [] for p in PHASES} for s in SIDES}
        self.sizes: dict[str, int] = {}
        self.results: dict[str, pa.Table] = {}

    def run(self, side: str, rep: int) -> None:
        out = self.work / side
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t = self.times[side]
        if side == "bare":
            path = out / "words.parquet"
            dt, data = timed(lambda: bare_table(self.files))
            t["build"].append(dt)
            t["write"].append(timed(lambda: pq.write_table(data, path, compression="zstd"))[0])
            dt, got = timed(lambda: pq.read_table(path))
        else:
            if side == "pipeline":
                dt, data = timed(lambda: words_table(self.files))
            else:
                dt, data = 0.0, self.ready
            t["build"].append(dt)
            dt, written = timed(lambda: tables.write_part(str(out), "words", data, part_name=f"part-bench-{rep:05d}"))
            t["write"].append(dt)
            path = Path(str(written))
            dt, got = timed(lambda: tables.read_table(str(out), "words"))
        t["read"].append(dt)
        self.sizes[side] = path.stat().st_size
        assert isinstance(got, pa.Table)
        self.results[side] = got

    def check(self) -> None:
        """Every side read back the same rows (the pipeline's in source order)."""
        expected = self.ready
        for side, got in self.results.items():
            if not got.schema.equals(WORDS):
                raise BenchError(f"{side}: read back schema {got.schema}")
            if not got.sort_by("source").equals(expected):
                raise BenchError(f"{side}: the table read back differs from the words written")
        if not self.results["pipeline"].equals(expected):
            raise BenchError("pipeline: the part read back is not in source order")
        self.results.clear()

    def median(self, side: str, phase: str) -> float:
        return statistics.median(self.times[side][phase])

    def total(self, side: str) -> float:
        return sum(self.median(side, p) for p in PHASES)


def report(sides: Sides) -> float:
    print()
    print(f"{'median seconds':46} {'build':>7} {'write':>7} {'read':>7} {'total':>7} {'file MB':>8}")
    labels = {
        "pipeline": "pipeline: words_table, write_part, read_table",
        "bare": "bare: comprehensions+pa.table, pq.write/read",
        "table": "table: ready pa.Table, write_part, read_table",
    }
    for s in SIDES:
        print(f"{labels[s]:46} " + " ".join(f"{sides.median(s, p):7.3f}" for p in PHASES)
              + f" {sides.total(s):7.3f} {sides.sizes[s] / 1e6:8.1f}")
    bare_io = sides.median("bare", "write") + sides.median("bare", "read")
    table_io = sides.median("table", "write") + sides.median("table", "read")
    print()
    for p in PHASES:
        print(f"  {p:5} pipeline/bare {sides.median('pipeline', p) / sides.median('bare', p):.2f}")
    print(f"  format only (ready table: write_part + read_table) / (pq.write_table + pq.read_table): "
          f"{table_io / bare_io:.3f}")
    return sides.total("pipeline") / sides.total("bare")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="words in the batch (default 1,000,000)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions of each side (default 5)")
    p.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = p.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        raise BenchError("--rows and --repeat must be at least 1")

    started = time.perf_counter()
    dt, files = timed(lambda: make_batch(args.rows))
    assert isinstance(files, list)
    n_rows = sum(len(f.words) for f in files)
    print(f"parquet_write: {n_rows} words of {len(files)} files (stt.contract.Word, parsed as the client parses "
          f"answers) made in {dt:.1f} s; pyarrow {pa.__version__}, zstd; repeat {args.repeat}, "
          f"cores {os.cpu_count()}, loadavg {os.getloadavg()[0]:.2f}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-parquet-", dir=args.workdir))
    try:
        sides = Sides(files, work)
        for side in SIDES:  # untimed warm-up (imports, allocator, page cache), and the check
            sides.run(side, 0)
        sides.check()
        for s in SIDES:
            sides.times[s] = {ph: [] for ph in PHASES}
        for rep in range(args.repeat):
            for side in SIDES[rep % 3:] + SIDES[:rep % 3]:
                sides.run(side, rep)
            sides.results.clear()
            print(f"  repetition {rep + 1}: " + " | ".join(
                f"{s} " + " ".join(f"{sides.times[s][ph][-1]:.3f}" for ph in PHASES) for s in SIDES), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio = report(sides)
    print(f"total runtime {time.perf_counter() - started:.0f} s, loadavg now {os.getloadavg()[0]:.2f}, "
          f"goal ratio <= {RATIO_GOAL}")
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
