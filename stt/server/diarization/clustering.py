"""Linking the chunks' local speakers into the recording's speakers, then refining the
speakers' voices window by window.

1. Each (chunk, local speaker) gets one embedding: the mean of the window embeddings over the
   windows where that local speaker talks alone, weighted by how much of the window is
   theirs. Averaging over up to 10 s makes these far steadier than single 1.5 s windows.
2. They are clustered by average-linkage AHC on cosine distance (cut at a threshold, or at
   ``num_speakers``). Two local speakers of one chunk cannot-link: the segmentation model
   already heard them as different people, so their distance is set to the maximum (2),
   which keeps voices apart that the embeddings alone find close (a telephone call's two
   narrow-band voices).
3. The cluster centroids are refined on single windows (``refine_centroids``): every
   single-speaker window joins its nearest centroid and the centroids are recomputed, a few
   times (k-means started from the AHC answer). A local speaker that is really two similar
   voices (the segmentation model merged them for the whole chunk) has a centroid between
   them; a second voice found elsewhere pulls its windows away, so the merged chunks split.
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

CANNOT_LINK_DISTANCE = 2.0  # the largest cosine distance


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


def _distances(local: LocalSpeakers) -> np.ndarray:
    """Condensed cosine distances, with the cannot-link of local speakers sharing a chunk."""
    from scipy.spatial.distance import pdist, squareform

    dist = squareform(np.clip(pdist(local.vectors, metric="cosine"), 0, 2))
    chunk = np.array([c for c, _ in local.keys])
    same_chunk = chunk[:, None] == chunk[None, :]
    np.fill_diagonal(same_chunk, False)
    dist[same_chunk] = CANNOT_LINK_DISTANCE
    return squareform(dist, checks=False)


def _ahc(local: LocalSpeakers, threshold: float, n_clusters: int | None) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(local.keys) < 2:
        return np.zeros(len(local.keys), dtype=int)
    tree = linkage(_distances(local), method="average")
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
        return _ahc(local, cfg.distance_threshold, min(num_speakers, n))
    labels = _ahc(local, cfg.distance_threshold, None)
    if labels.max() >= cfg.max_speakers:
        labels = _ahc(local, cfg.distance_threshold, cfg.max_speakers)
    return labels


def refine_centroids(vectors: np.ndarray, clean: np.ndarray, cent: np.ndarray, iterations: int) -> np.ndarray:
    """Centroids after ``iterations`` rounds of: single-speaker windows (``clean``) join their
    nearest centroid, each centroid becomes the mean of its windows (kept if it has none)."""
    own = vectors[clean]
    for _ in range(iterations):
        nearest = np.argmax(own @ cent.T, axis=1)
        cent = np.stack([own[nearest == k].mean(0) if (nearest == k).any() else cent[k]
                         for k in range(len(cent))])
        cent = cent / (np.linalg.norm(cent, axis=1, keepdims=True) + 1e-8)
    return cent
