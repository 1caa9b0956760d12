"""Compaction: the notebook's keyword search before and after, and `compact` against bare pyarrow.

Run:  .venv/bin/python bench/compact.py [--parts 2000] [--rows 500] [--repeat 3]

The OUT is what a long run leaves: `--parts` batches, each one part of the words table
with `--rows` rows (10 files of rows/10 entries, words alternating with spacings, words
drawn from a Zipf-distributed vocabulary of 5,000) and one part of the transcripts table
(those 10 files). Written with `tasks.tables.write_part`, as the pipeline writes them.

Measured in one run, medians of `--repeat` repetitions, sides interleaved:

  compact   `tasks.compaction.compact(out, table_names=("words",))` on a fresh copy
            of the uncompacted OUT (listing, reading, sorting, writing, commit, removal);
  bare      the same rows with bare pyarrow: `ds.dataset(files).to_table()` then
            `pq.write_table(..., compression="zstd")` (no sort, no commit, no removal).
  search    the notebook's keyword-in-context query (`tasks.analytics.keyword_in_context`
            over `Out.current("words")`, 8 words of context, 50 hits) on the compacted OUT
            and on the uncompacted one; both return the same hits (checked).

Prints `compact_vs_bare=<compact/bare>` (goal <= 1.5) and, as the very last line,
`ratio=<uncompacted search / compacted search>` (goal >= 5).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stt.contract import Word  # noqa: E402
from tasks import analytics, compaction, tables  # noqa: E402
from tasks.rows import WORDS, FileWords, TranscriptRow, words_table  # noqa: E402

FILES_PER_PART = 10
KEYWORD = "w0400"


def build(out: Path, parts: int, rows: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    per_file = rows // FILES_PER_PART
    vocab = np.array([f"w{i:04d}" for i in range(5000)])
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    for p in range(parts):
        files, transcripts = [], []
        for j in range(FILES_PER_PART):
            source = f"/archive/{2020 + p % 6}/{p:05d}-{j:02d}.wav"
            drawn = vocab[np.minimum(rng.zipf(1.3, per_file // 2 + 1) - 1, len(vocab) - 1)]
            words = []
            for k in range(per_file):
                text = str(drawn[k // 2]) if k % 2 == 0 else " "
                words.append(Word(text=text, start=k * 0.2, end=k * 0.2 + 0.15, type="word" if k % 2 == 0 else "spacing",
                                  speaker_id=f"speaker_{(k // 40) % 2}"))
            files.append(FileWords(source, f"fp-{p}-{j}", "Elevenlabs-STT", words))
            transcripts.append(TranscriptRow(
                source=source, fingerprint=f"fp-{p}-{j}", request_key=f"k{p}-{j}", model="Elevenlabs-STT",
                language="en", options="{}", text=" ".join(w.text for w in words if w.type == "word"),
                duration_s=per_file * 0.2, cost=0.001, currency="USD", upload_mode="direct", file_size=1000,
                speaker_count=2, run_id="bench", transcribed_at=stamp))
        name = f"part-20260101T000000-bench000-{p:05d}"
        tables.write_part(str(out), "words", words_table(files), part_name=name)
        tables.write_part(str(out), "transcripts", TranscriptRow.table(transcripts), part_name=name)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bare(src: Path, dst: Path) -> None:
    files = sorted(str(p) for p in (src / "words").glob("*.parquet"))
    data = ds.dataset(files, schema=WORDS, format="parquet").to_table()
    pq.write_table(data, dst / "bare.parquet", compression="zstd")


def search(out: Path) -> object:
    return analytics.keyword_in_context(analytics.Out(str(out)).current("words"), KEYWORD, width=8, limit=50)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compact-") as tmp:
        root = Path(tmp)
        small = root / "small"
        t0 = time.perf_counter()
        build(small, args.parts, args.rows)
        print(f"built {args.parts} parts x {args.rows} word rows in {time.perf_counter() - t0:.1f} s")
        compact_s, bare_s = [], []
        for i in range(args.repeat):
            work, out_bare = root / f"work{i}", root / f"bare{i}"
            shutil.copytree(small, work)
            out_bare.mkdir()
            sides = [("compact", lambda: compaction.compact(str(work), table_names=("words",))),
                     ("bare", lambda: bare(small, out_bare))]
            for name, fn in sides if i % 2 == 0 else sides[::-1]:
                (compact_s if name == "compact" else bare_s).append(timed(fn))
        compacted = root / "work0"
        compaction.compact(str(compacted), table_names=("transcripts",))
        print(f"words parts: {len(tables.part_files(str(small), 'words'))} -> "
              f"{len(tables.part_files(str(compacted), 'words'))}")
        a, b = search(small), search(compacted)
        assert a.sort("source", "start").equals(b.sort("source", "start")), "searches disagree"  # type: ignore[attr-defined]
        print(f"keyword {KEYWORD!r}: {a.height} hits")  # type: ignore[attr-defined]
        before_s, after_s = [], []
        for i in range(args.repeat):
            sides2 = [("before", small), ("after", compacted)]
            for name, out in sides2 if i % 2 == 0 else sides2[::-1]:
                (before_s if name == "before" else after_s).append(timed(lambda: search(out)))
    med = statistics.median
    print(f"compact   median {med(compact_s):.3f} s  {[round(x, 3) for x in compact_s]}")
    print(f"bare      median {med(bare_s):.3f} s  {[round(x, 3) for x in bare_s]}")
    print(f"search uncompacted median {med(before_s):.3f} s  {[round(x, 3) for x in before_s]}")
    print(f"search compacted   median {med(after_s):.3f} s  {[round(x, 3) for x in after_s]}")
    print(f"compact_vs_bare={med(compact_s) / med(bare_s):.2f}")
    print(f"ratio={med(before_s) / med(after_s):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
