"""Speaker embeddings of short sliding windows inside the speech (CAM++ on Kaldi fbank).

Windows, not whole turns, because the segmentation model sometimes hears two similar voices
as one local speaker for a whole 10 s chunk (AMI dev00): only window-level embeddings can
pull those apart again (see clustering.refine_centroids).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stt.server.diarization.campplus import CamppEncoder
from stt.server.diarization.fbank import FPS, log_fbank


@dataclass(frozen=True)
class WindowEmbeddings:
    """Speaker embeddings of short windows: where each window lies, and its vector."""

    spans: np.ndarray  # (n, 2) seconds
    vectors: np.ndarray  # (n, 192), unit length


def window_spans(regions: list[tuple[float, float]], window_s: float, step_s: float,
                 min_window_s: float) -> np.ndarray:
    """(n, 2) feature-frame spans of sliding windows inside the regions; a region shorter than a
    window gets one window of its own length if it is at least min_window_s long."""
    w, step, min_w = round(window_s * FPS), max(1, round(step_s * FPS)), round(min_window_s * FPS)
    out: list[tuple[int, int]] = []
    for s, e in regions:
        a, b = round(s * FPS), round(e * FPS)
        if b - a < min_w:
            continue
        if b - a <= w:
            out.append((a, b))
            continue
        starts = list(range(a, b - w + 1, step))
        if starts[-1] != b - w:
            starts.append(b - w)
        out.extend((x, x + w) for x in starts)
    return np.asarray(out, dtype=int).reshape(-1, 2)


def embed_windows(encoder: CamppEncoder, audio: np.ndarray, regions: list[tuple[float, float]],
                  window_s: float, step_s: float, min_window_s: float) -> WindowEmbeddings:
    """CAM++ embeddings of the sliding windows over the speech regions. Not thread-safe (the encoder)."""
    feats = log_fbank(audio)
    spans = np.minimum(window_spans(regions, window_s, step_s, min_window_s), len(feats))
    spans = spans[spans[:, 1] - spans[:, 0] >= min_window_s * FPS / 2]
    return WindowEmbeddings(spans / FPS, encoder.embed_windows(feats, spans))
