"""Which speaker said a word, given turns that may overlap.

A word heard while two people talk goes to the one whose voice dominates there: the speaker
who covers more of the word, and on a tie (both cover it, as in overlapped speech) the one
who holds the floor around it (more speech in the second before and after). The recogniser
transcribes the dominant voice; the other one is typically a short interjection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stt.server.diarization.types import Turn

CONTEXT_S = 1.0


class _Timeline:
    """The turns as arrays, for per-word look-ups without a Python loop over every turn."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.starts = np.array([t.start for t in turns], dtype=float)
        self.ends = np.array([t.end for t in turns], dtype=float)
        self.speakers = np.array([t.speaker for t in turns], dtype=int)
        self.num_speakers = int(self.speakers.max()) + 1 if len(turns) else 0

    def coverage(self, start: float, end: float) -> np.ndarray:
        """Seconds of [start, end] each speaker's turns cover."""
        overlap = np.clip(np.minimum(end, self.ends) - np.maximum(start, self.starts), 0, None)
        return np.bincount(self.speakers, weights=overlap, minlength=self.num_speakers)

    def nearest(self, start: float, end: float) -> int:
        """Speaker of the turn holding the midpoint, else of the nearest one (earliest on ties)."""
        mid = (start + end) / 2
        gap = np.maximum(self.starts - mid, mid - self.ends).clip(min=0)
        return int(self.speakers[int(np.argmin(gap))])


def speaker_at(turns: Sequence[Turn], start: float, end: float) -> int | None:
    """The speaker active at the midpoint of [start, end]; in a gap, the nearest turn's;
    None if there are no turns."""
    if not turns:
        return None
    return _Timeline(sorted(turns, key=lambda t: t.start)).nearest(start, end)


def _dominant(timeline: _Timeline, start: float, end: float) -> int:
    here = timeline.coverage(start, end)
    if here.max() <= 0:
        return timeline.nearest(start, end)
    around = timeline.coverage(start - CONTEXT_S, end + CONTEXT_S)
    contenders = np.flatnonzero(here >= here.max() - 0.1 * max(end - start, 1e-3))
    return int(contenders[np.argmax(around[contenders])])


def assign_speakers(turns: Sequence[Turn], spans: Sequence[tuple[float, float]]) -> list[int | None]:
    """The dominant speaker of every (start, end) word span (None for all if there are no turns)."""
    if not turns:
        return [None] * len(spans)
    timeline = _Timeline(sorted(turns, key=lambda t: t.start))
    return [_dominant(timeline, s, e) for s, e in spans]
