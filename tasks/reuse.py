"""Rows for a file whose content was already transcribed under another name: copied, not paid.

The same recording under two names (a copy, a renamed file, a file touched without being
changed) has one request key; the API is asked once and each name gets its own rows,
the copies with cost 0 and upload_mode "reused" so that the cost column adds up to the bill.
"""

from __future__ import annotations

from typing import Any

import pyarrow.dataset as ds

from stt.contract import Word
from tasks import tables
from tasks.discovery import AudioFile
from tasks.outcome import Outcome, as_copy
from tasks.rows import FileWords, SegmentRow, TranscriptRow


def copied_rows(out: str, wanted: list[tuple[str, AudioFile]], *,
                storage_options: dict[str, Any] | None = None) -> dict[str, Outcome]:
    """Outcomes for `wanted` (request key, file) from the rows OUT holds, by file URL: the
    rows copied for a twin, `already_done` for the very file. A key with no row is left out."""
    keys = sorted({k for k, _ in wanted})
    if not keys:
        return {}
    found = tables.read_table(out, "transcripts", storage_options=storage_options,
                              where=(ds.field("request_key").isin(keys)) & (ds.field("status") == "ok"))
    originals: dict[str, TranscriptRow] = {}
    for row in found.sort_by("transcribed_at").to_pylist():  # the latest row wins
        originals[row["request_key"]] = TranscriptRow(**row)
    sources = sorted({t.source for t in originals.values()})
    words = _by_source(tables.read_table(out, "words", storage_options=storage_options,
                                         where=ds.field("source").isin(sources)) if sources else None)
    segments = _by_source(tables.read_table(out, "segments", storage_options=storage_options,
                                            where=ds.field("source").isin(sources)) if sources else None)
    result = {}
    for key, f in wanted:
        t = originals.get(key)
        if t is None:
            continue
        if (t.source, t.fingerprint) == (f.url, f.fingerprint):
            result[f.url] = Outcome(key=key, sent=False, already_done=True)
            continue
        mine = [r for r in words.get(t.source, []) if r["fingerprint"] == t.fingerprint and r["model"] == t.model]
        turns = [SegmentRow(**r) for r in segments.get(t.source, [])
                 if r["fingerprint"] == t.fingerprint and r["model"] == t.model]
        file_words = FileWords(t.source, t.fingerprint, t.model, [
            Word(text=r["text"], start=r["start"], end=r["end"], type=r["type"], speaker_id=r["speaker"])
            for r in sorted(mine, key=lambda r: r["word_index"])]) if mine else None
        original = Outcome(key=key, transcript=t, words=file_words, segments=turns)
        result[f.url] = as_copy(original, f)
    return result


def _by_source(table: Any) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    if table is None or table.num_rows == 0:
        return grouped
    for row in table.sort_by([("source", "ascending")]).to_pylist():
        grouped.setdefault(row["source"], []).append(row)
    return grouped
