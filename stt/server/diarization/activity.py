"""From clustered chunks back to one timeline: who talks at every frame, overlap included.

Each chunk votes, frame by frame, for the clusters its local speakers were given; the votes
are averaged over the chunks that see the frame. The number of people talking at a frame is
the chunks' averaged local-speaker count (rounded); that many clusters, the most voted ones,
are active there. So two speakers overlap exactly where the segmentation model hears two.
"""

from __future__ import annotations

import numpy as np

from stt.server.diarization.embeddings import WindowEmbeddings
from stt.server.diarization.segmentation import (
    FRAME_OFFSET_S,
    FRAME_STEP_S,
    LOCAL_SPEAKERS,
    Segmentation,
    frame_time,
    runs,
)
from stt.server.diarization.types import Turn


def speaker_activity(seg: Segmentation, assignment: np.ndarray, num_clusters: int) -> np.ndarray:
    """(num_clusters, num_frames) bool: who talks at each frame of the global grid."""
    votes = np.zeros((num_clusters, seg.num_frames))
    seen = np.zeros(seg.num_frames)
    for c in range(len(seg.chunk_starts)):
        idx, keep = seg.global_index(c)
        seen[idx] += 1
        for s in range(LOCAL_SPEAKERS):
            k = assignment[c, s]
            if k >= 0:
                votes[k, idx] += seg.active[c, keep, s]
    votes /= np.maximum(seen, 1)
    count = seg.speaker_count()
    active = np.zeros(votes.shape, dtype=bool)
    order = np.argsort(-votes, axis=0, kind="stable")
    frames = np.arange(seg.num_frames)
    for rank in range(min(num_clusters, LOCAL_SPEAKERS)):
        pick = order[rank]
        on = (count > rank) & (votes[pick, frames] > 0)
        active[pick[on], frames[on]] = True
    return active


def _window_frames(windows: WindowEmbeddings, num_frames: int) -> np.ndarray:
    """(n, 2) global-frame spans of the windows."""
    spans = np.round((windows.spans - FRAME_OFFSET_S) / FRAME_STEP_S).astype(int)
    return np.clip(spans, 0, num_frames)


def _odd_ones(vectors: np.ndarray) -> tuple[np.ndarray, int]:
    """(mask of the windows nearer the least typical window than the centre, that window)."""
    centre = vectors.mean(0)
    centre /= np.linalg.norm(centre) + 1e-8
    seed = int(np.argmin(vectors @ centre))
    return vectors @ vectors[seed] > vectors @ centre, seed


def _peel(own: np.ndarray, spans: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Frames of one speaker (``own``) that its least typical windows win by majority vote;
    at least the middle of the least typical window."""
    odd, seed = _odd_ones(vectors)
    votes = np.zeros(len(own))
    for (a, b), is_odd in zip(spans, odd):
        votes[a:b] += 1 if is_odd else -1
    new = own & (votes > 0)
    if not new.any():
        a, b = spans[seed]
        new[a + (b - a) // 3 : b - (b - a) // 3] = True
        new &= own
    return new


def split_to_count(active: np.ndarray, windows: WindowEmbeddings, wanted: int) -> np.ndarray:
    """Add speakers until ``wanted`` talk, by peeling the busiest speaker's least typical
    windows off into a new speaker.

    For a given ``num_speakers`` that clustering could not reach (voices the segmentation model
    merged, or speakers heard for a second). Peeling off the atypical part costs far less when
    the guess is wrong than halving a speaker. Stops when nobody has two windows of their own.
    """
    spans = _window_frames(windows, active.shape[1])
    active = active[active.any(1)]
    while len(active) < wanted and len(active):
        busiest = int(np.argmax(active.sum(1)))
        mine = np.array([b > a and active[busiest, a:b].mean() > 0.5 for a, b in spans], dtype=bool)
        if mine.sum() < 2:
            break
        new = _peel(active[busiest], spans[mine], windows.vectors[mine])
        if not new.any():
            break
        active[busiest] &= ~new
        active = np.vstack([active, new[None]])
    return active


def to_turns(active: np.ndarray, duration_s: float) -> list[Turn]:
    """Turns sorted by start, speakers numbered by first appearance."""
    spans = [(a, b, k) for k in range(len(active)) for a, b in runs(active[k])]
    spans.sort()
    order: dict[int, int] = {}
    turns = []
    for a, b, k in spans:
        start, end = round(frame_time(a), 3), round(min(frame_time(b), duration_s), 3)
        if end > start:
            turns.append(Turn(start, end, order.setdefault(k, len(order))))
    return turns
