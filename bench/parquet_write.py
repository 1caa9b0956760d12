"""Cost of `tasks.tables.write_part` / `read_table` over bare pyarrow, on a words table.

Run:  .venv/bin/python bench/parquet_write.py [--rows 1000000] [--repeat 5]

A words table (schema `WORDS`) of `--rows` rows with realistic values: ~2,000
distinct sources (local paths of a dated archive, 300-700 words each), their
fingerprints, model "Elevenlabs-STT" (the model that returns words), word_index from 0
in each source, short words alternating with " " spacings (type "word"/"spacing"),
increasing start/end times in seconds, speaker "speaker_0".."speaker_3" in turns.

Measured in one run, `--repeat` repetitions, the sides interleaved and their order
rotated each repetition so machine noise hits all alike; median times:

  pipeline  list[dict] -> write_part, then read_table. This is the real path:
            tasks/transcribe.py builds one dict per word (`_success`) and hands the
            batch's list of dicts to `write_part`, which calls
            `pa.Table.from_pylist(rows, schema=WORDS)` and then `pq.write_table(...,
            compression="zstd")` to a temporary name and renames it.
  table     pa.Table -> write_part, then read_table (what write_part costs when given a
            ready table).
  bare      pq.write_table(table, path, compression="zstd") (same compression as
            write_part), then pq.read_table(path).

The ratio that counts, printed as the very last line `ratio=<value>` (goal <= 1.5), is
pipeline (write + read) over bare (write + read). The conversion list[dict] -> pa.Table
is also timed on its own, next to the alternatives a fix could use (build columns
instead of dict rows, then `pa.Table.from_pydict` / `pa.table(..., schema=WORDS)`).
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from tasks import tables  # noqa: E402
from tasks.rows import WORDS, FileWords, words_table  # noqa: E402

RATIO_GOAL = 1.5
MODEL = "Elevenlabs-STT"
VOCAB = ("the", "a", "and", "to", "of", "I", "you", "it", "is", "that", "we", "so", "yes", "no", "okay",
         "call", "order", "account", "number", "please", "thank", "hello", "right", "well", "just", "can",
         "will", "have", "not", "this", "on", "for", "with", "my", "your", "be", "do", "what", "about", "there",
         "customer", "service", "payment", "today", "week", "delivery", "address", "check", "moment", "sure")


class Word:
    """Stands for stt.contract.Word (a pydantic model; its attributes read as plain ones)."""

    __slots__ = ("text", "start", "end", "type", "speaker_id")

    def __init__(self, text, start, end, type_, speaker_id):
        self.text, self.start, self.end, self.type, self.speaker_id = text, start, end, type_, speaker_id


def make_words(n_rows: int, seed: int = 7) -> tuple[list[dict], dict[str, list], list]:
    """The rows as tasks/transcribe.py's `_success` makes them (one dict per word, the
    source/fingerprint/model strings shared by the words of a file), the same data as
    columns, and per file (url, fingerprint, words) as the API answer gives them."""
    rng = np.random.default_rng(seed)
    # ~2,000 sources, 300-700 words each, trimmed/extended to exactly n_rows
    n_sources = max(1, round(n_rows / 500))
    counts = rng.integers(300, 701, n_sources)
    counts = np.maximum(1, np.round(counts * n_rows / counts.sum()).astype(int))
    counts[-1] += n_rows - counts.sum()
    vocab = list(VOCAB) + [f"w{i}" for i in range(2000)]  # plus rarer words (names, numbers...)
    vocab_p = np.r_[np.full(len(VOCAB), 0.7 / len(VOCAB)), np.full(2000, 0.3 / 2000)]
    rows: list[dict] = []
    cols: dict[str, list] = {f.name: [] for f in WORDS}
    files: list = []
    for s in range(n_sources):
        n = int(counts[s])
        day = s % 365
        url = f"/srv/archive/2024/{day // 31 + 1:02d}/{day % 31 + 1:02d}/call_{s:06d}.wav"
        fingerprint = f"local:{int(rng.integers(200_000, 9_000_000))}:{1_700_000_000_000_000_000 + s * 7919}"
        word_ids = rng.choice(len(vocab), size=n, p=vocab_p)
        durations = rng.uniform(0.08, 0.6, n)
        gaps = rng.uniform(0.0, 0.25, n)
        starts = np.cumsum(gaps + np.r_[0.0, durations[:-1]])
        ends = starts + durations
        speaker_turn = np.cumsum(rng.random(n) < 0.02) % 4  # a new speaker every ~50 words
        speakers = [f"speaker_{k}" for k in range(4)]
        words = []
        for i in range(n):
            is_word = i % 2 == 0
            words.append(Word(vocab[word_ids[i]] if is_word else " ", round(float(starts[i]), 3),
                              round(float(ends[i]), 3), "word" if is_word else "spacing",
                              speakers[speaker_turn[i]]))
        files.append((url, fingerprint, words))
        rows.extend(word_rows(url, fingerprint, MODEL, words))
    for row in rows:
        for k, v in row.items():
            cols[k].append(v)
    return rows, cols, files


def word_rows(url: str, fingerprint: str, model: str, words: list) -> list[dict]:
    """The dict-per-word rows tasks/transcribe.py `_success` used to build (kept for comparison)."""
    return [
        {"source": url, "fingerprint": fingerprint, "model": model, "word_index": i, "text": w.text,
         "start": w.start, "end": w.end, "type": w.type, "speaker": w.speaker_id}
        for i, w in enumerate(words)
    ]


def pipeline_parts(files: list) -> list:
    """The pipeline's in-memory form: the words of each file as the answer gave them."""
    return [FileWords(url, fingerprint, MODEL, words) for url, fingerprint, words in files]


def build_rows(files: list) -> list[dict]:
    rows: list[dict] = []
    for url, fingerprint, words in files:
        rows.extend(word_rows(url, fingerprint, MODEL, words))
    return rows


def build_columns(files: list) -> dict[str, list]:
    """The fix: the same data appended column by column, per file."""
    cols: dict[str, list] = {f.name: [] for f in WORDS}
    for url, fingerprint, words in files:
        n = len(words)
        cols["source"].extend([url] * n)
        cols["fingerprint"].extend([fingerprint] * n)
        cols["model"].extend([MODEL] * n)
        cols["word_index"].extend(range(n))
        cols["text"].extend([w.text for w in words])
        cols["start"].extend([w.start for w in words])
        cols["end"].extend([w.end for w in words])
        cols["type"].extend([w.type for w in words])
        cols["speaker"].extend([w.speaker_id for w in words])
    return cols


def rows_to_columns(rows: list[dict]) -> dict[str, list]:
    names = [f.name for f in WORDS]
    return {k: [r[k] for r in rows] for k in names}


def timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows in the words table (default 1,000,000)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions of each side (default 5)")
    p.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = p.parse_args(argv)

    started = time.perf_counter()
    t0 = time.perf_counter()
    rows, cols, files = make_words(args.rows)
    table = pa.Table.from_pydict(cols, schema=WORDS)
    parts = pipeline_parts(files)
    assert table.equals(pa.Table.from_pylist(rows, schema=WORDS))
    assert table.equals(pa.Table.from_pydict(build_columns(files), schema=WORDS))
    n_sources = len(set(cols["source"]))
    print(f"parquet_write: {table.num_rows} rows, {n_sources} sources, {table.nbytes / 1e6:.1f} MB in Arrow, "
          f"pyarrow {pa.__version__}, compression zstd (as write_part), repeat {args.repeat}, "
          f"cores {os.cpu_count()}, loadavg {os.getloadavg()[0]:.2f}; data made in {time.perf_counter() - t0:.1f} s")

    work = Path(tempfile.mkdtemp(prefix="bench-parquet-", dir=args.workdir))
    names = ("pipeline", "table", "bare")
    write_t: dict[str, list[float]] = {k: [] for k in names}
    read_t: dict[str, list[float]] = {k: [] for k in names}
    conv_t: dict[str, list[float]] = {k: [] for k in (
        "from_pylist", "rows->columns+from_pydict", "from_pydict", "build_rows", "build_columns",
        "build_rows+from_pylist", "build_columns+from_pydict")}
    sizes: dict[str, int] = {}
    try:
        def clean(side: str) -> Path:
            d = work / side
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            return d

        def run(side: str, rep: int) -> None:
            out = clean(side)
            if side == "bare":
                path = out / "words.parquet"
                write_t[side].append(timed(lambda: pq.write_table(table, path, compression="zstd")))
                sizes[side] = path.stat().st_size
                result = {}
                read_t[side].append(timed(lambda: result.setdefault("t", pq.read_table(path))))
            else:
                # The pipeline side times building its table from the per-word columns too.
                make = (lambda: words_table(parts)) if side == "pipeline" else (lambda: table)
                written = {}
                write_t[side].append(timed(lambda: written.setdefault("p", tables.write_part(
                    str(out), "words", make(), part_name=f"part-bench-{rep:05d}"))))
                sizes[side] = Path(written["p"]).stat().st_size
                result = {}
                read_t[side].append(timed(lambda: result.setdefault("t", tables.read_table(str(out), "words"))))
            got = result["t"]
            if got.num_rows != table.num_rows or not got.schema.equals(WORDS):
                raise SystemExit(f"{side}: read back {got.num_rows} rows, schema {got.schema}")
            if rep == 0 and not got.equals(table):
                raise SystemExit(f"{side}: the table read back differs from the one written")

        # untimed warm-up of every side (imports, allocator, page cache of the folder)
        for side in names:
            run(side, 0)
        for side in names:
            write_t[side].clear()
            read_t[side].clear()
        for rep in range(args.repeat):
            order = names[rep % 3:] + names[:rep % 3]
            for side in order:
                run(side, rep)
            # the conversions alone (what write_part adds in front of pq.write_table)
            conv_t["from_pylist"].append(timed(lambda: pa.Table.from_pylist(rows, schema=WORDS)))
            conv_t["rows->columns+from_pydict"].append(
                timed(lambda: pa.Table.from_pydict(rows_to_columns(rows), schema=WORDS)))
            conv_t["from_pydict"].append(timed(lambda: pa.Table.from_pydict(cols, schema=WORDS)))
            conv_t["build_rows"].append(timed(lambda: build_rows(files)))
            conv_t["build_columns"].append(timed(lambda: build_columns(files)))
            conv_t["build_rows+from_pylist"].append(
                timed(lambda: pa.Table.from_pylist(build_rows(files), schema=WORDS)))
            conv_t["build_columns+from_pydict"].append(
                timed(lambda: pa.Table.from_pydict(build_columns(files), schema=WORDS)))
            print(f"  repetition {rep + 1}: " + " | ".join(
                f"{s} w {write_t[s][-1]:.3f} r {read_t[s][-1]:.3f}" for s in names))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {s: (statistics.median(write_t[s]), statistics.median(read_t[s])) for s in names}
    bare_w, bare_r = med["bare"]
    print()
    print(f"{'path':44} {'write s':>8} {'read s':>8} {'total s':>8} {'vs bare':>8} {'file MB':>8}")
    labels = {
        "pipeline": "pipeline: words_table -> write_part; read_table",
        "table": "pa.Table -> write_part; read_table",
        "bare": "bare: pq.write_table; pq.read_table",
    }
    for s in names:
        w, r = med[s]
        print(f"{labels[s]:44} {w:8.3f} {r:8.3f} {w + r:8.3f} {(w + r) / (bare_w + bare_r):8.2f} "
              f"{sizes[s] / 1e6:8.1f}")
    print()
    print("conversion to a pa.Table alone, and what the rows cost to build (median):")
    for k, v in conv_t.items():
        what = {
            "from_pylist": "pa.Table.from_pylist(list[dict], schema=WORDS)   (what write_part does)",
            "rows->columns+from_pydict": "list[dict] -> dict of lists in Python, then from_pydict",
            "from_pydict": "pa.Table.from_pydict(dict of lists, schema=WORDS) (rows built as columns)",
            "build_rows": "building the dict rows from the answers' words (_success's comprehension)",
            "build_columns": "building columns instead (extend 9 lists per file)",
            "build_rows+from_pylist": "today, end to end: dict rows, then from_pylist",
            "build_columns+from_pydict": "the fix, end to end: columns, then from_pydict",
        }[k]
        print(f"  {statistics.median(v):7.3f} s  {what}")
    pw, pr = med["pipeline"]
    tw, tr = med["table"]
    print()
    print(f"write only: pipeline/bare {pw / bare_w:.2f}, table-path/bare {tw / bare_w:.2f}; "
          f"read only: read_table/pq.read_table {pr / bare_r:.2f}")
    print(f"table path (pa.Table -> write_part + read_table) / bare: {(tw + tr) / (bare_w + bare_r):.3f}")
    print(f"total runtime {time.perf_counter() - started:.0f} s, loadavg now {os.getloadavg()[0]:.2f}, "
          f"goal ratio <= {RATIO_GOAL}")
    print(f"ratio={(pw + pr) / (bare_w + bare_r):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
