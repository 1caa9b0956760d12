"""Kaldi-style log mel filterbank features: what the CAM++ speaker encoder was trained on.

80 bands, 25 ms Povey-windowed frames every 10 ms (snip_edges), DC removed, pre-emphasis
0.97, 512-point power spectrum, Kaldi's mel scale from 20 Hz to Nyquist, natural log,
no dither. Numerically the same as ``torchaudio.compliance.kaldi.fbank(wav,
num_mel_bins=80, dither=0)`` (checked to 2.5e-4), written in numpy so that the server
needs no torchaudio.
"""

from __future__ import annotations

import numpy as np

from stt.server.diarization.types import SAMPLE_RATE

FRAME_LEN = 400  # 25 ms
HOP = 160  # 10 ms
FPS = SAMPLE_RATE // HOP
N_FFT = 512
N_MELS = 80
_PREEMPH = 0.97


def _kaldi_mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_banks(low_hz: float = 20.0) -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangles, linear in Kaldi mel; the Nyquist bin gets no weight."""
    lo, hi = _kaldi_mel(low_hz), _kaldi_mel(SAMPLE_RATE / 2)
    delta = (hi - lo) / (N_MELS + 1)
    mel = _kaldi_mel(np.arange(N_FFT // 2) * SAMPLE_RATE / N_FFT)
    left = lo + np.arange(N_MELS)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    rising, falling = (mel - left) / (centre - left), (right - mel) / (right - centre)
    weights = np.where((mel > left) & (mel < right), np.where(mel <= centre, rising, falling), 0.0)
    return np.pad(weights, ((0, 0), (0, 1))).astype(np.float32)


_BANKS = _mel_banks()
_POVEY = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME_LEN) / (FRAME_LEN - 1))) ** 0.85


def log_fbank(audio: np.ndarray) -> np.ndarray:
    """(frames, 80) float32 log mel energies of 16 kHz mono audio; frame i starts at i * 10 ms."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = 1 + (len(x) - FRAME_LEN) // HOP
    if n <= 0:
        return np.zeros((0, N_MELS), np.float32)
    frames = np.lib.stride_tricks.as_strided(x, shape=(n, FRAME_LEN), strides=(x.strides[0] * HOP, x.strides[0]))
    frames = frames.astype(np.float64)
    frames -= frames.mean(1, keepdims=True)
    frames[:, 1:] -= _PREEMPH * frames[:, :-1].copy()
    frames[:, 0] *= 1 - _PREEMPH
    power = np.abs(np.fft.rfft(frames * _POVEY, n=N_FFT, axis=1)) ** 2
    mel = power.astype(np.float32) @ _BANKS.T
    return np.log(np.maximum(mel, np.finfo(np.float32).eps))
