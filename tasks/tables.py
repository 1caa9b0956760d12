"""The Parquet tables bulkscribe writes under OUT, and how it writes them.

Each table is a folder of part files (`OUT/<table>/part-*.parquet`), one part per table
per batch, so a run's results become durable batch by batch and a crash loses at most
the batch in flight. Readers glob `OUT/<table>/**/*.parquet` (polars, duckdb, pyarrow).

Writes are atomic: on a local disk a part is written under a dot-prefixed temporary name
that no `*.parquet` glob matches and renamed into place; on object stores (S3...) an
object only appears once its upload completes, so it is written in place.

Schemas are fixed here, not inferred from the first batch, so that a batch of nulls
does not produce a part whose types disagree with the others.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.sources import filesystem_for

_ts = pa.timestamp("us", tz="UTC")

TRANSCRIPTS = pa.schema([
    ("source", pa.string()),
    ("fingerprint", pa.string()),
    ("request_key", pa.string()),       # fingerprint + model + options: what a re-run skips on
    ("model", pa.string()),
    ("language", pa.string()),          # detected or requested language of the answer
    ("options", pa.string()),           # JSON of the request options
    ("text", pa.string()),
    ("duration_s", pa.float64()),
    ("cost", pa.float64()),
    ("currency", pa.string()),
    ("upload_mode", pa.string()),       # direct | url | reencode | chunks
    ("file_size", pa.int64()),
    ("speaker_count", pa.int32()),
    ("status", pa.string()),            # ok
    ("run_id", pa.string()),
    ("transcribed_at", _ts),
])

FAILURES = pa.schema([
    ("source", pa.string()),
    ("fingerprint", pa.string()),
    ("request_key", pa.string()),
    ("model", pa.string()),
    ("error_kind", pa.string()),        # permanent | transient (gave up after retries) | skipped
    ("error_type", pa.string()),        # exception class, e.g. BadRequest
    ("status_code", pa.int32()),
    ("message", pa.string()),
    ("attempts", pa.int32()),
    ("run_id", pa.string()),
    ("failed_at", _ts),
])

WORDS = pa.schema([
    ("source", pa.string()),
    ("fingerprint", pa.string()),
    ("model", pa.string()),
    ("word_index", pa.int32()),
    ("text", pa.string()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("type", pa.string()),
    ("speaker", pa.string()),
])

SEGMENTS = pa.schema([
    ("source", pa.string()),
    ("fingerprint", pa.string()),
    ("model", pa.string()),
    ("segment_index", pa.int32()),
    ("speaker", pa.string()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("text", pa.string()),
])

SCHEMAS = {"transcripts": TRANSCRIPTS, "failures": FAILURES, "words": WORDS, "segments": SEGMENTS}


def _fs(url: str, storage_options: dict | None):
    fs, path = filesystem_for(url, storage_options)
    return fs, path.rstrip("/")


def is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def write_part(out: str, table: str, rows: Iterable[dict] | dict[str, list] | pa.Table, *, part_name: str,
               storage_options: dict | None = None) -> str | None:
    """Write one part file of `table` atomically; returns its path (None if no rows).

    `rows` is a list of row dicts, a dict of columns (what the words table uses: building
    columns is ~2x cheaper than a dict per word at a million rows), or a pyarrow Table.
    """
    schema = SCHEMAS[table]
    if isinstance(rows, pa.Table):
        data = rows
    elif isinstance(rows, dict):
        data = pa.Table.from_pydict({name: rows.get(name, []) for name in schema.names}, schema=schema)
    else:
        data = pa.Table.from_pylist(list(rows), schema=schema)
    if data.num_rows == 0:
        return None
    fs, root = _fs(out, storage_options)
    folder = f"{root}/{table}"
    final = f"{folder}/{part_name}.parquet"
    if is_local(fs):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.{part_name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            pq.write_table(data, tmp, compression="zstd")
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with fs.open(final, "wb") as f:
            pq.write_table(data, f, compression="zstd")
    return final


def read_table(out: str, table: str, *, columns: list[str] | None = None,
               storage_options: dict | None = None) -> pa.Table:
    """All parts of a table (empty with the table's schema when there are none)."""
    schema = SCHEMAS[table]
    fs, root = _fs(out, storage_options)
    folder = f"{root}/{table}"
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    if not fs.exists(folder):
        return wanted.empty_table()
    files = [p for p in fs.find(folder) if p.endswith(".parquet") and not os.path.basename(p).startswith(".")]
    if not files:
        return wanted.empty_table()
    # The fixed schema (not the first file's) so parts written by older versions,
    # with fewer columns, read as nulls instead of failing.
    dataset = ds.dataset(files, schema=schema, format="parquet", filesystem=fs)
    return dataset.to_table(columns=columns)


def done_request_keys(out: str, storage_options: dict | None = None) -> set[str]:
    """Request keys already transcribed successfully: what a re-run must not pay for again."""
    t = read_table(out, "transcripts", columns=["request_key", "status"], storage_options=storage_options)
    keys = t.column("request_key").to_pylist()
    status = t.column("status").to_pylist()
    return {k for k, s in zip(keys, status) if s == "ok" and k}
