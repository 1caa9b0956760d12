"""Whisper's log-Mel features, computed a window at a time.

faster-whisper's FeatureExtractor works on the whole array at once and needs about 1 MB of
scratch memory per second of audio (600 MB for 10 minutes). Every frame depends only on
its own 400 samples, so computing 30 s of frames at a time gives the same values with a
few MB of scratch; the one global step (the floor at 8 below the loudest value) is
applied at the end, as faster-whisper applies it.
"""

from __future__ import annotations

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

_CHUNK_FRAMES = 1000


def log_mel(audio: np.ndarray, extractor: FeatureExtractor) -> np.ndarray:
    """The same array as `extractor(audio)` (n_mels x frames, float32)."""
    n_fft, hop = extractor.n_fft, extractor.hop_length
    padded = _padded(audio, hop, n_fft // 2)
    frames = 1 + (len(padded) - n_fft) // hop - 1  # faster-whisper drops the last frame
    window = np.hanning(n_fft + 1)[:-1].astype("float32")
    out = np.empty((extractor.mel_filters.shape[0], frames), dtype=np.float32)
    for first in range(0, frames, _CHUNK_FRAMES):
        last = min(frames, first + _CHUNK_FRAMES)
        piece = padded[first * hop:(last - 1) * hop + n_fft]
        stft = extractor.stft(piece, n_fft, hop, window=window, center=False, return_complex=True)
        magnitudes = np.abs(stft.astype("complex64")) ** 2
        mel = extractor.mel_filters @ magnitudes
        out[:, first:last] = np.log10(np.clip(mel, a_min=1e-10, a_max=None))
    np.maximum(out, out.max(initial=-np.inf) - 8.0, out=out)
    out += 4.0
    out /= 4.0
    return out


def _padded(audio: np.ndarray, zeros: int, reflect: int) -> np.ndarray:
    """`np.pad(np.pad(audio, (0, zeros)), reflect, mode="reflect")` in one copy, not two."""
    if len(audio) + zeros <= reflect:  # too short for one reflection: np.pad repeats it
        return np.pad(np.pad(audio.astype(np.float32), (0, zeros)), reflect, mode="reflect")
    out = np.zeros(len(audio) + zeros + 2 * reflect, dtype=np.float32)
    body = out[reflect:len(out) - reflect]
    body[:len(audio)] = audio
    out[:reflect] = body[reflect:0:-1]
    out[len(out) - reflect:] = body[-2:-reflect - 2:-1]
    return out
