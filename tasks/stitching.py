"""One answer for a file sent in chunks: texts joined, words and turns shifted into place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from stt.contract import Diarization, Metadata, Segment, StatusResponse, TranscribeResponse, Word

Answer = StatusResponse | TranscribeResponse


class Span(Protocol):
    """Where a chunk lies in its file."""

    @property
    def index(self) -> int: ...

    @property
    def start_s(self) -> float: ...

    @property
    def end_s(self) -> float | None: ...


def stitch(parts: Sequence[tuple[Span, str, list[Word]]]) -> tuple[str, list[Word]]:
    """Join per-chunk transcripts into one, in chunk order.

    Text: the chunks' texts, stripped, joined with single spaces, empty ones skipped (the
    text is taken as the API gave it; words dropped below are not removed from it).
    Words: shifted by the chunk's start; a word whose shifted midpoint lies outside the
    chunk is dropped (a model writing past the end of its audio); the others are clamped
    into the chunk and so that each starts at or after the previous word's end.
    Speakers: diarization labels are per chunk, "speaker_1" of chunk 0 and of chunk 1
    need not be the same person, so they become "c<chunk index>:<label>".
    New Word objects are returned; the inputs are not modified.
    """
    texts: list[str] = []
    words: list[Word] = []
    previous_end = 0.0
    for span, text, chunk_words in sorted(parts, key=lambda part: part[0].index):
        if text and text.strip():
            texts.append(text.strip())
        lo = span.start_s
        hi = span.end_s if span.end_s is not None else float("inf")
        for word in chunk_words:
            start, end = word.start + lo, word.end + lo
            if not lo <= (start + end) / 2 <= hi:
                continue
            start = min(max(start, lo, previous_end), hi)
            end = min(max(end, start), hi)
            speaker = None if word.speaker_id is None else f"c{span.index}:{word.speaker_id}"
            words.append(Word(text=word.text, start=start, end=end, type=word.type, speaker_id=speaker))
            previous_end = end
    return " ".join(texts), words


def merge_answers(parts: Sequence[tuple[Span, Answer]]) -> Answer:
    """One answer from the answers of a file's chunks (a single answer passes through)."""
    if len(parts) == 1:
        return parts[0][1]
    stitched = []
    segments: list[Segment] = []
    cost = minutes = 0.0
    language = None
    for span, answer in parts:
        stitched.append((span, answer.transcription or "", _words(answer)))
        segments += [Segment(speaker=f"c{span.index}:{s.speaker}", text=s.text,
                             start=s.start + span.start_s, end=s.end + span.start_s) for s in _segments(answer)]
        if answer.metadata is not None:
            cost += answer.metadata.cost or 0.0
            minutes += answer.metadata.actualDuration or answer.metadata.chargedDuration or 0.0
            language = language or answer.metadata.language
    text, words = stitch(stitched)
    first = parts[0][1].metadata
    meta = Metadata(model=first.model if first else "", cost=cost, actualDuration=minutes,
                    chargedDuration=minutes, language=language)
    return StatusResponse(status="completed", transcription=text, metadata=meta, words=words,
                          diarization=Diarization(segments=segments) if segments else None)


def _words(answer: Answer) -> list[Word]:
    return (answer.words or []) if isinstance(answer, StatusResponse) else []


def _segments(answer: Answer) -> list[Segment]:
    if isinstance(answer, StatusResponse) and answer.diarization is not None:
        return answer.diarization.segments
    return []
