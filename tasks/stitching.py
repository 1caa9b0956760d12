"""One answer for a file sent in chunks: texts joined, words and turns shifted into place,
one set of speakers for the whole file.

Each chunk stands for its own part of the file, [own_start_s, end_s]; a chunk may also
carry audio before that (the last seconds of the previous chunk, when the file is
diarized). Words are kept from the chunk whose own part holds their midpoint. The words
both chunks transcribe in the shared seconds tie their speakers together: a speaker of
the new chunk becomes the file-wide speaker it says the most of those words as, so
"speaker_0" is the same person at minute 2 and at minute 50. A speaker of the chunk who
says nothing in the shared seconds is taken for one of the file's speakers not yet matched
in this chunk (the one heard last first), as long as the chunk has no more speakers than the
file had: only then is a voice new. (A new voice in a chunk where a known one is silent is
the case this cannot tell apart: words carry no voice.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from stt.contract import (
    Diarization,
    Metadata,
    Segment,
    StatusResponse,
    TranscribeResponse,
    Word,
)

Answer = StatusResponse | TranscribeResponse


class Span(Protocol):
    """Where a chunk lies in its file."""

    @property
    def index(self) -> int: ...

    @property
    def start_s(self) -> float: ...

    @property
    def end_s(self) -> float | None: ...

    @property
    def own_start_s(self) -> float: ...


def stitch(parts: Sequence[tuple[Span, str, list[Word]]]) -> tuple[str, list[Word]]:
    """Join per-chunk transcripts into one, in chunk order.

    Text: the chunks' texts, stripped, joined with single spaces, empty ones skipped (the
    text is taken as the API gave it; chunks that overlap are only stitched from words).
    Words: shifted by the chunk's start; a word whose shifted midpoint lies outside the
    chunk's own part is dropped (the previous chunk has it, or the model wrote past the end
    of its audio); the others are clamped into the chunk's own part and so that each starts
    at or after the previous word's end. Speakers: one labelling for the file (see module).
    New Word objects are returned; the inputs are not modified.
    """
    texts: list[str] = []
    words: list[Word] = []
    speakers = _Speakers()
    for span, text, chunk_words in sorted(parts, key=lambda part: part[0].index):
        if text and text.strip():
            texts.append(text.strip())
        lo, hi = span.own_start_s, span.end_s if span.end_s is not None else float("inf")
        shifted = [_shift(w, span.start_s) for w in chunk_words]
        own = [w for w in shifted if lo <= _mid(w) <= hi]
        speakers.link(words, [w for w in shifted if _mid(w) < lo],
                      list(dict.fromkeys(w.speaker_id for w in own if w.type == "word" and w.speaker_id)))
        previous_end = words[-1].end if words else 0.0
        for w in shifted:
            if not lo <= _mid(w) <= hi:
                continue
            start = min(max(w.start, lo, previous_end), hi)
            end = min(max(w.end, start), hi)
            words.append(Word(text=w.text, start=start, end=end, type=w.type, speaker_id=speakers.label(w)))
            previous_end = end
    return " ".join(texts), words


def _shift(w: Word, by: float) -> Word:
    return Word(text=w.text, start=w.start + by, end=w.end + by, type=w.type, speaker_id=w.speaker_id)


def _mid(w: Word) -> float:
    return (w.start + w.end) / 2


class _Speakers:
    """Chunk-local speaker labels -> file-wide ones, numbered by first appearance."""

    def __init__(self) -> None:
        self.count = 0
        self.local: dict[str, str] = {}  # the current chunk's label -> file-wide label
        self.last_heard: dict[str, float] = {}  # file-wide label -> when it last spoke

    def link(self, kept: list[Word], shared: list[Word], chunk_speakers: list[str]) -> None:
        """Start a new chunk: map its speakers by the words it shares with what is kept, then
        its other speakers to the file's speakers it does not map yet, who spoke last first,
        as long as the chunk has no more speakers than the file so far (more: new voices)."""
        votes = _votes(kept, shared)
        self.local = {}
        for (mine, theirs), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
            if mine not in self.local and theirs not in self.local.values():
                self.local[mine] = theirs
        free = sorted((g for g in self.last_heard if g not in self.local.values()),
                      key=lambda g: -self.last_heard[g])
        for mine in chunk_speakers:
            if mine not in self.local and free:
                self.local[mine] = free.pop(0)

    def label(self, word: Word) -> str | None:
        local = word.speaker_id
        if local is None:
            return None
        if local not in self.local:
            self.local[local] = f"speaker_{self.count}"
            self.count += 1
        if word.type == "word":
            self.last_heard[self.local[local]] = word.end
        return self.local[local]


def _votes(kept: list[Word], shared: list[Word]) -> dict[tuple[str, str], float]:
    """Seconds each (new chunk's speaker, file-wide speaker) pair say the same words at the same time."""
    votes: dict[tuple[str, str], float] = {}
    for w in shared:
        if w.type != "word" or w.speaker_id is None:
            continue
        for k in reversed(kept):
            if k.end <= w.start:
                break
            both = min(k.end, w.end) - max(k.start, w.start)
            if both > 0 and k.speaker_id is not None and k.type == "word":
                votes[(w.speaker_id, k.speaker_id)] = votes.get((w.speaker_id, k.speaker_id), 0.0) + both
    return votes


def merge_answers(parts: Sequence[tuple[Span, Answer]]) -> Answer:
    """One answer from the answers of a file's chunks (a single answer passes through)."""
    if len(parts) == 1:
        return parts[0][1]
    stitched = [(span, answer.transcription or "", _words(answer)) for span, answer in parts]
    text, words = stitch(stitched)
    diarized = any(_diarized(answer) for _, answer in parts)
    segments = turns(words) if diarized else []
    if diarized:
        text = " ".join(f"{s.speaker}: {s.text}" for s in segments)
    return StatusResponse(status="completed", transcription=text, metadata=_metadata(parts), words=words,
                          diarization=Diarization(segments=segments) if diarized else None)


def turns(words: list[Word]) -> list[Segment]:
    """Speaker turns from words: consecutive words of one speaker ("speaker_0" -> "Speaker 1")."""
    segments: list[Segment] = []
    for w in words:
        if w.type != "word" or w.speaker_id is None:
            continue
        label = f"Speaker {int(w.speaker_id.rsplit('_', 1)[-1]) + 1}"
        if segments and segments[-1].speaker == label:
            last = segments[-1]
            last.text, last.end = f"{last.text} {w.text}", w.end
        else:
            segments.append(Segment(speaker=label, text=w.text, start=w.start, end=w.end))
    return segments


def _metadata(parts: Sequence[tuple[Span, Answer]]) -> Metadata:
    cost = minutes = 0.0
    language = None
    for _, answer in parts:
        if answer.metadata is not None:
            cost += answer.metadata.cost or 0.0
            minutes += answer.metadata.actualDuration or answer.metadata.chargedDuration or 0.0
            language = language or answer.metadata.language
    first = parts[0][1].metadata
    ends = [span.end_s for span, _ in parts]
    # Chunks that overlap are charged for their shared seconds twice; the file is not longer for it.
    actual = max(e for e in ends if e is not None) / 60.0 if all(e is not None for e in ends) else minutes
    return Metadata(model=first.model if first else "", cost=cost, actualDuration=actual,
                    chargedDuration=minutes, language=language)


def _words(answer: Answer) -> list[Word]:
    return (answer.words or []) if isinstance(answer, StatusResponse) else []


def _diarized(answer: Answer) -> bool:
    return isinstance(answer, StatusResponse) and answer.diarization is not None
