"""The rows of the four tables, typed once, next to their Arrow schemas.

Each row type is a dataclass; its Arrow schema is derived from its fields (an `arrow`
entry in a field's metadata overrides the default type), so a column cannot be added to
one and forgotten in the other. Schemas are fixed here, not inferred from a batch, so
that a batch of nulls never writes a part whose types disagree with the others.

Words are the exception in shape, not in type: a file can have thousands, so they are
kept per file as a list of `stt.contract.Word` (the one word type, from the API answer
through chunk stitching to this table) and turned into Arrow column by column.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from stt.contract import Word

_INT32 = {"arrow": pa.int32()}
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_DEFAULT_TYPES: dict[Any, pa.DataType] = {
    str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_(), datetime: _TIMESTAMP,
}


def schema_of(cls: type) -> pa.Schema:
    """The Arrow schema of a row dataclass: one column per field, in field order."""
    hints = typing.get_type_hints(cls)
    columns = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        nullable = isinstance(hint, types.UnionType) and type(None) in hint.__args__
        base = next(a for a in hint.__args__ if a is not type(None)) if nullable else hint
        columns.append(pa.field(f.name, f.metadata.get("arrow", _DEFAULT_TYPES[base]), nullable=True))
    return pa.schema(columns)


class _Row:
    """Rows of one table turned into an Arrow table, column by column."""

    __slots__ = ()
    SCHEMA: ClassVar[pa.Schema]

    @classmethod
    def table(cls, rows: list[Any]) -> pa.Table:
        names = cls.SCHEMA.names
        return pa.Table.from_pydict({n: [getattr(r, n) for r in rows] for n in names}, schema=cls.SCHEMA)


@dataclass(frozen=True, slots=True)
class TranscriptRow(_Row):
    """One transcribed file. A re-run skips files whose (source, fingerprint, options) has a row."""

    source: str
    fingerprint: str                    # cheap change detector from the listing (size+mtime, ETag)
    request_key: str                    # content + model + options: the request's identity
    model: str
    language: str | None                # detected or requested language of the answer
    options: str                        # JSON of the request options
    text: str
    duration_s: float | None
    cost: float | None
    currency: str | None
    upload_mode: str                    # direct | url | staged | reencode | chunks
    file_size: int
    speaker_count: int | None = field(metadata=_INT32)
    status: str = "ok"                  # ok
    run_id: str = ""
    transcribed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FailureRow(_Row):
    """One file that could not be transcribed, and why."""

    source: str
    fingerprint: str
    request_key: str | None
    model: str
    error_kind: str                     # permanent | transient (gave up after retries) | unknown (maybe paid)
    error_type: str                     # error class, e.g. BadRequest
    status_code: int | None = field(metadata=_INT32)
    message: str
    attempts: int = field(metadata=_INT32)
    run_id: str = ""
    failed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SegmentRow(_Row):
    """One speaker turn of a diarized file."""

    source: str
    fingerprint: str
    model: str
    segment_index: int = field(metadata=_INT32)
    speaker: str
    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class Turn:
    """A speaker turn as read back from the segments table (or a reference RTTM): who spoke when."""

    start: float
    end: float
    speaker: str


TranscriptRow.SCHEMA = schema_of(TranscriptRow)
FailureRow.SCHEMA = schema_of(FailureRow)
SegmentRow.SCHEMA = schema_of(SegmentRow)

TRANSCRIPTS = TranscriptRow.SCHEMA
FAILURES = FailureRow.SCHEMA
SEGMENTS = SegmentRow.SCHEMA
WORDS = pa.schema([
    ("source", pa.string()),
    ("fingerprint", pa.string()),
    ("model", pa.string()),
    ("word_index", pa.int32()),
    ("text", pa.string()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("type", pa.string()),              # word | spacing | audio_event
    ("speaker", pa.string()),
])
SCHEMAS = {"transcripts": TRANSCRIPTS, "failures": FAILURES, "words": WORDS, "segments": SEGMENTS}


@dataclass(frozen=True, slots=True)
class FileWords:
    """The words of one file, as the API (or chunk stitching) gave them."""

    source: str
    fingerprint: str
    model: str
    words: list[Word]


#: The fields of `stt.contract.Word` that the words table keeps, in its column order.
_WORD_FIELDS = pa.struct([("text", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
                          ("type", pa.string()), ("speaker_id", pa.string())])


def words_table(files: list[FileWords]) -> pa.Table:
    """The words of a batch as one Arrow table, in source order (as `tables.write_part`
    stores parts, so it need not sort them).

    A million words are one pass in Python: pyarrow reads each Word's fields from its
    `__dict__` (where a pydantic model keeps them) in C, over twice as fast as a list
    per attribute; the per-file columns are one value per file, repeated by index
    (bench/parquet_write.py).
    """
    files = sorted((f for f in files if f.words), key=lambda f: f.source)  # stable: a file's words keep their order
    if not files:
        return WORDS.empty_table()
    counts = np.fromiter((len(f.words) for f in files), dtype=np.int64, count=len(files))
    run_index = pa.array(np.repeat(np.arange(len(files), dtype=np.int32), counts))

    def per_file(values: list[str]) -> pa.Array:
        return pa.array(values, pa.string()).take(run_index)

    starts = np.repeat(np.cumsum(counts) - counts, counts)
    word_index = (np.arange(int(counts.sum()), dtype=np.int64) - starts).astype(np.int32)
    text, start, end, type_, speaker = pa.array([vars(w) for f in files for w in f.words], _WORD_FIELDS).flatten()
    return pa.Table.from_arrays([
        per_file([f.source for f in files]), per_file([f.fingerprint for f in files]),
        per_file([f.model for f in files]), pa.array(word_index), text, start, end, type_, speaker,
    ], schema=WORDS)
