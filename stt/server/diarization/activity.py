"""From speakers' voices back to one timeline: who talks at every frame, overlap included.

Every frame first gets the speaker whose voice the embedding windows over it are nearest
to. Then each chunk votes, frame by frame: where one of its local speakers talks alone, for
that frame's speaker (unless the segmentation model says it is someone else, see
``_chunk_votes``); where two overlap, for each local speaker's usual speaker. The votes are
averaged over the chunks that see the frame, and the number of people talking there (the
chunks' averaged local-speaker count) picks that many of the most voted speakers. So voices
the segmentation model merged are still told apart by their embeddings, and two speakers
overlap exactly where the segmentation model hears two.
"""

from __future__ import annotations

import numpy as np

from stt.server.diarization.embeddings import WindowEmbeddings
from stt.server.diarization.segmentation import (
    FRAME_STEP_S,
    LOCAL_SPEAKERS,
    Segmentation,
    frame_time,
    runs,
)
from stt.server.diarization.types import Turn


def single_speaker_windows(seg: Segmentation, windows: WindowEmbeddings, fraction: float) -> np.ndarray:
    """(n,) bool: windows where the segmentation hears exactly one speaker on ``fraction`` of the frames."""
    count = seg.speaker_count()
    spans = seg.frame_spans(windows.spans)
    return np.array([b > a and float((count[a:b] == 1).mean()) >= fraction for a, b in spans], dtype=bool)


def frame_labels(seg: Segmentation, windows: WindowEmbeddings, cent: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """(num_frames,) the speaker whose voice the windows covering each frame are nearest to
    (single-speaker windows count double); frames no window covers take the nearest covered
    frame's speaker."""
    votes = np.zeros((len(cent), seg.num_frames))
    nearest = np.argmax(windows.vectors @ cent.T, axis=1) if len(windows.vectors) else np.zeros(0, int)
    for (a, b), k, is_clean in zip(seg.frame_spans(windows.spans), nearest, clean):
        votes[k, a:b] += 1.0 if is_clean else 0.5
    labels = np.argmax(votes, axis=0)
    covered = np.flatnonzero(votes.sum(0) > 0)
    if len(covered):
        pos = np.clip(np.searchsorted(covered, np.arange(seg.num_frames)), 0, len(covered) - 1)
        before = covered[np.maximum(pos - 1, 0)]
        after = covered[pos]
        frames = np.arange(seg.num_frames)
        labels = labels[np.where(np.abs(frames - before) < np.abs(after - frames), before, after)]
    return labels


def _chunk_votes(act: np.ndarray, labels: np.ndarray, num_clusters: int, min_frames: int) -> np.ndarray:
    """(num_clusters, frames) one chunk's votes. Each local speaker has a home cluster (distinct
    ones, Hungarian on how often its solo frames carry each label). A solo frame votes for its
    own label, unless that label is another local speaker's home: the segmentation model says
    they are different people, so it votes home. Overlapped frames vote home."""
    from scipy.optimize import linear_sum_assignment

    n = act.sum(-1)
    solo = act & (n == 1)[:, None]
    hist = np.stack([np.bincount(labels[solo[:, s]], minlength=num_clusters) for s in range(LOCAL_SPEAKERS)])
    rows, cols = linear_sum_assignment(-hist)
    home = {int(r): int(c) for r, c in zip(rows, cols)}
    votes = np.zeros((num_clusters, len(act)))
    for s in range(LOCAL_SPEAKERS):
        if not act[:, s].any():
            continue
        mine = home.get(s, int(np.argmax(hist[s])))
        others = [home[t] for t in home if t != s and act[:, t].sum() >= min_frames]
        own = np.where(np.isin(labels, others), mine, labels)
        frames = np.flatnonzero(solo[:, s])
        votes[own[frames], frames] += 1
        votes[mine, act[:, s] & (n > 1)] += 1
    return votes


def speaker_activity(seg: Segmentation, labels: np.ndarray, num_clusters: int, min_local_speech_s: float) -> np.ndarray:
    """(num_clusters, num_frames) bool: who talks at each frame of the global grid.

    Every chunk votes (``_chunk_votes``), the votes are averaged over the chunks that see the
    frame; the number of people talking at a frame is the chunks' averaged local-speaker
    count (rounded), and that many clusters, the most voted ones, are active there. So two
    speakers overlap exactly where the segmentation model hears two.
    """
    votes = np.zeros((num_clusters, seg.num_frames))
    seen = np.zeros(seg.num_frames)
    min_frames = round(min_local_speech_s / FRAME_STEP_S)
    for c in range(len(seg.chunk_starts)):
        idx, keep = seg.global_index(c)
        seen[idx] += 1
        votes[:, idx] += _chunk_votes(seg.active[c, keep], labels[idx], num_clusters, min_frames)
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


def split_to_count(seg: Segmentation, active: np.ndarray, windows: WindowEmbeddings, wanted: int) -> np.ndarray:
    """Add speakers until ``wanted`` talk, by peeling the busiest speaker's least typical
    windows off into a new speaker.

    For a given ``num_speakers`` that clustering could not reach (voices the segmentation model
    merged, or speakers heard for a second). Peeling off the atypical part costs far less when
    the guess is wrong than halving a speaker. Stops when nobody has two windows of their own.
    """
    spans = seg.frame_spans(windows.spans)
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
