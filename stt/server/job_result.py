"""The body of a completed job, in ElevenLabs' shape, from a transcript and optional speakers/events.

`words` interleaves `word`, `spacing` and `audio_event` entries (with `speaker_id` when
diarizing); `diarization.segments` holds one entry per speaker turn; `transcription` reads
"Speaker 1: ... Speaker 2: ...". One word type throughout: `stt.contract.Word`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stt.contract import Diarization, Segment, StatusResponse, Word
from stt.server.diarization.types import AudioEvent, Turn
from stt.server.engine import Transcript

_MIN_WORD_S = 0.02


def build_result(t: Transcript, *, turns: Sequence[Turn] | None = None,
                 events: Sequence[AudioEvent] | None = None) -> dict[str, Any]:
    """The completed-job body (without metadata)."""
    words = _words(t)
    if turns is not None:
        _assign(words, turns)
    entries = _with_spacing(words) + [_event(ev) for ev in events or ()]
    entries.sort(key=lambda e: (e.start, 0 if e.type == "audio_event" else 1))
    segments = _turns(words) if turns is not None else []
    transcription = " ".join(f"{s.speaker}: {s.text}" for s in segments) if turns is not None else t.text
    response = StatusResponse(status="completed", transcription=transcription, words=entries,
                              diarization=Diarization(segments=segments) if turns is not None else None)
    return response.model_dump(exclude_none=True)


def _words(t: Transcript) -> list[Word]:
    """The transcript's words, increasing and never overlapping the previous one."""
    words: list[Word] = []
    prev_end = 0.0
    for w in t.words:
        text = w.text.strip()
        if not text:
            continue
        start = max(w.start, prev_end)
        end = max(w.end, start + _MIN_WORD_S)
        words.append(Word(text=text, start=round(start, 3), end=round(end, 3), type="word"))
        prev_end = end
    return words


def _assign(words: list[Word], turns: Sequence[Turn]) -> None:
    """Each word's speaker (in overlap: the dominant voice), numbered by first spoken word."""
    from stt.server.diarize import assign_speakers

    raw = assign_speakers(turns, [(w.start, w.end) for w in words])
    order: dict[int, int] = {}
    for s in raw:
        if s is not None and s not in order:
            order[s] = len(order)
    for w, s in zip(words, raw):
        w.speaker_id = f"speaker_{order.get(s, 0) if s is not None else 0}"


def _with_spacing(words: list[Word]) -> list[Word]:
    entries: list[Word] = []
    for w in words:
        if entries and entries[-1].type == "word":
            prev = entries[-1]
            entries.append(Word(text=" ", start=prev.end, end=max(prev.end, w.start), type="spacing",
                                speaker_id=prev.speaker_id))
        entries.append(w)
    return entries


def _event(ev: AudioEvent) -> Word:
    label = ev.label.strip("()[] ").lower()
    return Word(text=f"({label})", start=round(ev.start, 3), end=round(max(ev.end, ev.start + _MIN_WORD_S), 3),
                type="audio_event")


def _turns(words: list[Word]) -> list[Segment]:
    segments: list[Segment] = []
    for w in words:
        label = f"Speaker {int((w.speaker_id or 'speaker_0').rsplit('_', 1)[-1]) + 1}"
        if segments and segments[-1].speaker == label:
            segments[-1].text = f"{segments[-1].text} {w.text}"
            segments[-1].end = w.end
        else:
            segments.append(Segment(speaker=label, text=w.text, start=w.start, end=w.end))
    return segments
