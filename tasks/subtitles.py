"""Subtitles and plain text from a file's words (and speaker turns): cue building and writers.

A cue is at most MAX_CUE_S seconds and MAX_LINES lines of at most MAX_LINE_CHARS
characters (the usual broadcast limits: 42 characters, two lines, about 7 seconds).
Cues are built greedily over the spoken words, in order; a new cue starts when
- the next word would break one of those limits,
- the speaker changes (a cue never mixes speakers),
- there is a pause of PAUSE_S or more before the next word,
- the cue is at least half full and its last word ends a sentence.
A single word longer than a line gets a cue of its own. Times never go backwards: a
cue starts no earlier than the previous one ended, and ends no earlier than it starts;
a cue shorter than MIN_CUE_S is held longer when the next cue leaves room.

Speaker labels come from the diarization turns (the segment active at a word's
midpoint; e.g. "Speaker 1"), else from the word's own speaker id. SRT shows them as a
"Speaker 1: " prefix, WebVTT as a voice span (`<v Speaker 1>`); both count towards
the line length in SRT only, where they are displayed as text.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from tasks.rows import Turn

MAX_CUE_S = 7.0
MAX_LINE_CHARS = 42
MAX_LINES = 2
PAUSE_S = 1.0
MIN_CUE_S = 0.7
_SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


@dataclass(frozen=True)
class Token:
    """One entry of the words table: a word, a spacing or an audio event."""

    text: str
    start: float
    end: float
    type: str = "word"
    speaker: str | None = None


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    speaker: str | None = None


@dataclass(frozen=True)
class _Word:
    text: str
    start: float
    end: float
    speaker: str | None
    sep: str  # what separates it from the previous word: the API's spacing, else " " or "" by script


def wrap(text: str, width: int = MAX_LINE_CHARS) -> list[str]:
    """Greedy wrap at spaces (or anywhere, for text without spaces)."""
    lines: list[str] = []
    current = ""
    for piece in (text.split(" ") if " " in text else list(text)):
        sep = " " if " " in text and current else ""
        if current and len(current) + len(sep) + len(piece) > width:
            lines.append(current)
            current = piece
        else:
            current += sep + piece
    if current:
        lines.append(current)
    return lines


def fits(text: str) -> bool:
    lines = wrap(text)
    return len(lines) <= MAX_LINES and all(len(line) <= MAX_LINE_CHARS for line in lines)


def _words(tokens: Sequence[Token], turns: Sequence[Turn]) -> list[_Word]:
    """Spoken words and audio events with their separators and speaker labels."""
    has_spacing = any(t.type == "spacing" for t in tokens)
    starts = [t.start for t in turns]
    words: list[_Word] = []
    sep = ""
    for t in tokens:
        if t.type == "spacing":
            sep = " " if t.text.strip() == "" else t.text
            continue
        text = t.text.strip()
        if not text:
            continue
        speaker = t.speaker
        if turns:
            mid = (t.start + t.end) / 2
            i = bisect.bisect_right(starts, mid) - 1
            if i >= 0 and turns[i].end >= mid:
                speaker = turns[i].speaker
        if not has_spacing:
            sep = "" if not words or (_unspaced(words[-1].text[-1]) and _unspaced(text[0])) else " "
        words.append(_Word(text, t.start, t.end, speaker, sep))
        sep = ""
    return words


def _unspaced(ch: str) -> bool:
    """A character of a script written without spaces between words (Han, kana, Thai, Lao,
    Khmer, Burmese) or CJK punctuation: used to join words when the API gave no spacings."""
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x3000 <= o <= 0x30FF or 0xFF00 <= o <= 0xFFEF
            or 0x0E00 <= o <= 0x0EFF or 0x1780 <= o <= 0x17FF or 0x1000 <= o <= 0x109F)


def build_cues(tokens: Sequence[Token], turns: Sequence[Turn] = (), label_in_text: bool = True) -> list[Cue]:
    """Cues from a file's words (see the module docstring for the rules)."""
    groups: list[list[_Word]] = []
    for w in _words(tokens, turns):
        cur = groups[-1] if groups else None
        if cur is None or _breaks(cur, w, label_in_text):
            groups.append([w])
        else:
            cur.append(w)
    return _timed([(g[0].start, g[-1].end, _text(g), g[0].speaker) for g in groups])


def _text(group: list[_Word]) -> str:
    return "".join((w.sep if i else "") + w.text for i, w in enumerate(group)).strip()


def _breaks(cue: list[_Word], w: _Word, label_in_text: bool) -> bool:
    last = cue[-1]
    label = f"{cue[0].speaker}: " if label_in_text and cue[0].speaker else ""
    candidate = label + _text([*cue, w])
    return (w.speaker != last.speaker
            or w.end - cue[0].start > MAX_CUE_S
            or w.start - last.end >= PAUSE_S
            or not fits(candidate)
            or (last.text.endswith(_SENTENCE_END) and len(label + _text(cue)) > MAX_LINE_CHARS))


def _timed(raw: list[tuple[float, float, str, str | None]]) -> list[Cue]:
    cues: list[Cue] = []
    for i, (start, end, text, speaker) in enumerate(raw):
        start = max(start, cues[-1].end if cues else 0.0)
        end = max(end, start)
        if end - start < MIN_CUE_S:
            limit = raw[i + 1][0] if i + 1 < len(raw) else start + MIN_CUE_S
            end = max(end, min(start + MIN_CUE_S, limit))
        cues.append(Cue(start, end, text, speaker))
    return cues


# -- writers -------------------------------------------------------------------------------


def _clock(seconds: float, decimal: str) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def to_srt(cues: Iterable[Cue]) -> str:
    blocks = []
    for i, c in enumerate(cues, 1):
        text = f"{c.speaker}: {c.text}" if c.speaker else c.text
        blocks.append(f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n" + "\n".join(wrap(text)) + "\n")
    return "\n".join(blocks)


def to_vtt(cues: Iterable[Cue]) -> str:
    blocks = ["WEBVTT\n"]
    for c in cues:
        lines = wrap(c.text)
        if c.speaker:
            lines[0] = f"<v {c.speaker}>{lines[0]}"
        blocks.append(f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def to_text(text: str, turns: Sequence[Turn] = (), turn_texts: Sequence[str] = ()) -> str:
    """Plain text: one paragraph per speaker turn when diarized, else the transcript as it is."""
    if turns and len(turn_texts) == len(turns):
        return "\n\n".join(f"{t.speaker}: {x.strip()}" for t, x in zip(turns, turn_texts)) + "\n"
    return text.strip() + "\n"


def to_json(meta: dict[str, object], cues: Sequence[Cue], tokens: Sequence[Token], turns: Sequence[Turn]) -> str:
    return json.dumps({**meta, "cues": [asdict(c) for c in cues], "words": [asdict(t) for t in tokens],
                       "segments": [asdict(t) for t in turns]}, ensure_ascii=False, indent=1) + "\n"
