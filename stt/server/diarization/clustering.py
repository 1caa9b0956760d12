"""Linking the chunks' local speakers into the recording's speakers.

Each (chunk, local speaker) gets one embedding: the mean of the GE2E window embeddings over
the windows where that local speaker talks alone, weighted by how much of the window is
theirs. Averaging over up to 10 s makes these far steadier than single 1.5 s windows, which
is what lets GE2E separate telephone-band and meeting voices at all. They are clustered by
average-linkage AHC on cosine distance (cut at a threshold, or at ``num_speakers``); then, in
every chunk, the local speakers go to distinct clusters (Hungarian assignment on similarity),
because the segmentation model already knows they are different people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stt.server.diarization.embeddings import WindowEmbeddings
from stt.server.diarization.segmentation import (
    CHUNK_SAMPLES,
    FRAME_OFFSET_S,
    FRAME_STEP_S,
    LOCAL_SPEAKERS,
    Segmentation,
)
from stt.server.diarization.types import SAMPLE_RATE, DiarizerConfig


@dataclass(frozen=True)
class LocalSpeakers:
    """One embedding per (chunk, local speaker) that spoke alone long enough to get one."""

    keys: list[tuple[int, int]]  # (chunk, local speaker)
    vectors: np.ndarray  # (n, 256), unit length
    speech_s: np.ndarray  # (n,) seconds the local speaker is active in its chunk


def local_speakers(seg: Segmentation, windows: WindowEmbeddings, cfg: DiarizerConfig) -> LocalSpeakers:
    keys: list[tuple[int, int]] = []
    vectors: list[np.ndarray] = []
    speech: list[float] = []
    ta, tb = windows.spans[:, 0], windows.spans[:, 1]
    for c, start in enumerate(seg.chunk_starts):
        act = seg.active[c]
        alone = act & (act.sum(-1, keepdims=True) == 1)
        cum = np.vstack([np.zeros((1, LOCAL_SPEAKERS)), np.cumsum(alone, axis=0)])
        inside = np.flatnonzero((tb > start) & (ta < start + CHUNK_SAMPLES / SAMPLE_RATE))
        fa = np.clip(np.ceil((ta[inside] - start - FRAME_OFFSET_S) / FRAME_STEP_S), 0, len(act)).astype(int)
        fb = np.clip(np.ceil((tb[inside] - start - FRAME_OFFSET_S) / FRAME_STEP_S), 0, len(act)).astype(int)
        share = (cum[fb] - cum[fa]) / ((tb[inside] - ta[inside]) / FRAME_STEP_S)[:, None]  # (w, 3)
        for s in range(LOCAL_SPEAKERS):
            active_s = float(act[:, s].sum()) * FRAME_STEP_S
            weight = np.where(share[:, s] >= cfg.min_alone_fraction, share[:, s], 0.0)
            if active_s < cfg.min_local_speech_s or weight.sum() <= 0:
                continue
            v = weight @ windows.vectors[inside]
            keys.append((c, s))
            vectors.append(v / (np.linalg.norm(v) + 1e-8))
            speech.append(active_s)
    dim = windows.vectors.shape[1]
    return LocalSpeakers(keys, np.asarray(vectors, np.float32).reshape(-1, dim), np.asarray(speech))


def _ahc(vectors: np.ndarray, threshold: float, n_clusters: int | None) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=int)
    tree = linkage(np.clip(pdist(vectors, metric="cosine"), 0, 2), method="average")
    if n_clusters is not None:
        labels = fcluster(tree, t=n_clusters, criterion="maxclust")
    else:
        labels = fcluster(tree, t=threshold, criterion="distance")
    return np.unique(labels, return_inverse=True)[1]


def centroids(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    c = np.stack([vectors[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
    return c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-8)


def cluster(local: LocalSpeakers, cfg: DiarizerConfig, num_speakers: int | None) -> np.ndarray:
    """Cluster label per local speaker: cut into ``num_speakers`` clusters if given (fewer if
    there are fewer local speakers), else at the distance threshold (at most max_speakers)."""
    n = len(local.keys)
    if n == 0:
        return np.zeros(0, dtype=int)
    if num_speakers is not None:
        return _ahc(local.vectors, cfg.distance_threshold, min(num_speakers, n))
    labels = _ahc(local.vectors, cfg.distance_threshold, None)
    if labels.max() >= cfg.max_speakers:
        labels = _ahc(local.vectors, cfg.distance_threshold, cfg.max_speakers)
    return labels


def merge_into_nearest(local: LocalSpeakers, labels: np.ndarray, small: int) -> np.ndarray:
    """Labels with cluster ``small`` joined to the cluster whose centroid is most like it."""
    cent = centroids(local.vectors, labels)
    sim = cent[small] @ cent.T
    sim[small] = -np.inf
    merged = np.where(labels == small, int(np.argmax(sim)), labels)
    return np.unique(merged, return_inverse=True)[1]


def assign_chunks(local: LocalSpeakers, labels: np.ndarray, num_chunks: int) -> np.ndarray:
    """(num_chunks, 3) cluster of each local speaker (-1: none). Inside a chunk, local speakers
    go to distinct clusters while there are enough; any left over join their nearest one."""
    from scipy.optimize import linear_sum_assignment

    out = -np.ones((num_chunks, LOCAL_SPEAKERS), dtype=int)
    if len(local.keys) == 0:
        return out
    cent = centroids(local.vectors, labels)
    by_chunk: dict[int, list[int]] = {}
    for i, (c, _) in enumerate(local.keys):
        by_chunk.setdefault(c, []).append(i)
    for c, members in by_chunk.items():
        sim = local.vectors[members] @ cent.T
        rows, cols = linear_sum_assignment(-sim)
        chosen = dict(zip(rows.tolist(), cols.tolist()))
        for r, i in enumerate(members):
            out[c, local.keys[i][1]] = chosen.get(r, int(np.argmax(sim[r])))
    return out
