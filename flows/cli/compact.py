"""`bulkscribe compact OUT`: merge each table's small parts into a few large ones."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("compact", help="merge the small Parquet parts of OUT's tables into a few large ones")
    p.add_argument("out", help="output folder or fsspec URL that `run` wrote")
    p.add_argument("--target-mb", type=float, default=128.0,
                   help="size of a compacted part in MiB of Parquet (default 128); parts over half of it stay")
    p.add_argument("--table", action="append", default=[],
                   help="compact only this table (repeatable; default: all four)")


def main(args: argparse.Namespace) -> int:
    from config.settings import Settings
    from tasks import tables
    from tasks.compaction import compact

    chosen = tuple(args.table) or tables.TABLES
    unknown = [t for t in chosen if t not in tables.TABLES]
    if unknown:
        print(f"bulkscribe compact: unknown table(s) {', '.join(unknown)}; tables: {', '.join(tables.TABLES)}")
        return 2
    options = Settings().storage_options  # BULKSCRIBE_STORAGE_OPTIONS, as for `run`
    results = compact(args.out, table_names=chosen, target_bytes=int(args.target_mb * 1024 * 1024),
                      storage_options=options)
    print(f"bulkscribe compact -> {args.out}")
    for r in results:
        print(f"  {r.table:<12} parts {r.parts_before:>6} -> {r.parts_after:<6} rows merged {r.rows:>10}"
              f"  {r.bytes_in / 1e6:8.1f} MB -> {r.bytes_out / 1e6:.1f} MB")
    return 0
