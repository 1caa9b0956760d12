"""The Parquet tables under OUT: how parts are written and read.

Each table is a folder of part files (`OUT/<table>/part-*.parquet`), one part per table
per batch, so a run's results become durable batch by batch and a crash loses at most
the batch in flight (whose answers the ledger still holds). Readers glob
`OUT/<table>/**/*.parquet` (polars, duckdb, pyarrow). Row types and schemas: `tasks.rows`.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks import compaction_log, storage
from tasks.rows import SCHEMAS

TABLES = tuple(SCHEMAS)
#: Parts are sorted by `source` (column 0 of every table) and written with min/max
#: statistics per row group, so a reader after one file's rows skips the row groups (and
#: files) that cannot hold them. 128k rows: a few MB of words per group.
SORT_COLUMN = "source"
ROW_GROUP_ROWS = 128 * 1024


def write_part(out: str, table: str, data: pa.Table, *, part_name: str,
               storage_options: dict[str, Any] | None = None) -> str | None:
    """Write one part file of `table` atomically; returns its path (None if no rows)."""
    if data.num_rows == 0:
        return None
    if not data.schema.equals(SCHEMAS[table]):
        data = data.cast(SCHEMAS[table])
    fs, root = storage.filesystem_for(out, storage_options)
    final = f"{root.rstrip('/')}/{table}/{part_name}.parquet"
    if not is_sorted(data.column(SORT_COLUMN)):
        data = data.sort_by(SORT_COLUMN)  # a stable sort: one file's words keep their order
    sorting = pq.SortingColumn.from_ordering(data.schema, [(SORT_COLUMN, "ascending")])
    storage.write_atomic(fs, final, lambda f: pq.write_table(
        data, f, compression="zstd", row_group_size=ROW_GROUP_ROWS, sorting_columns=sorting,
        write_statistics=True, use_dictionary=dictionary_columns(data.schema)))
    return final


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: strings (sources, words, speakers repeat).
    Times and numbers rarely do, and a 128k-row group's dictionary of them made words
    parts 60% larger and twice as slow to write (bench/parquet_write.py)."""
    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


def is_sorted(column: pa.ChunkedArray) -> bool:
    """True when the column is in ascending order (a linear check; sorting costs far more)."""
    if len(column) < 2:
        return True
    return not pc.any(pc.less(column.slice(1), column.slice(0, len(column) - 1))).as_py()


def part_files(out: str, table: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The table's live part files (paths without protocol): temporary files, parts that a
    compaction replaced and a compaction's uncommitted output excluded (`tasks.compaction_log`)."""
    fs, root = storage.filesystem_for(out, storage_options)
    folder = f"{root.rstrip('/')}/{table}"

    def listing() -> list[str]:
        if not fs.exists(folder):
            return []
        return sorted(p for p in fs.find(folder)
                      if p.endswith(".parquet") and not os.path.basename(p).startswith("."))

    return compaction_log.live(fs, folder, listing)


def read_table(out: str, table: str, *, columns: list[str] | None = None, where: ds.Expression | None = None,
               storage_options: dict[str, Any] | None = None) -> pa.Table:
    """All parts of a table (empty with the table's schema when there are none).

    Only `columns` are read from the files, and only rows matching `where` (row groups
    whose statistics rule them out are skipped). The fixed schema (not the first file's)
    is used, so parts written by older versions, with fewer columns, read as nulls.
    """
    schema = SCHEMAS[table]
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    files = part_files(out, table, storage_options)
    if not files:
        return wanted.empty_table()
    fs, _ = storage.filesystem_for(out, storage_options)
    return ds.dataset(files, schema=schema, format="parquet", filesystem=fs).to_table(columns=columns, filter=where)
