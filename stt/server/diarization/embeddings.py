"""Speaker embeddings: the GE2E encoder on sliding windows inside the speech.

The weights are the GE2E speaker encoder (3-layer LSTM, 256-d) that Resemblyzer ships inside
its wheel (``resemblyzer/pretrained.pt``, pinned by hash in config/diarization.lock). Only the
weight file is used: the network (torch) and its 40-band mel front end (numpy, numerically
the same as Resemblyzer's librosa call) are rebuilt here, so nothing imports librosa/numba or
webrtcvad. Other encoders that a PyPI package ships with their weights were looked for
(ECAPA, ResNet, CAM++, ReDimNet): every one found downloads its weights at run time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stt.server.diarization.types import SAMPLE_RATE

HOP = 160  # 10 ms mel frames
FPS = SAMPLE_RATE // HOP
N_FFT = 400  # 25 ms window
N_MELS = 40
EMBEDDING_DIM = 256
_BATCH = 32  # fastest per window on one thread


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def _mel_filterbank() -> np.ndarray:
    """Same matrix as librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (slaney, slaney-norm)."""
    fftfreqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((N_MELS, len(fftfreqs)))
    for i in range(N_MELS):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    enorm = 2.0 / (mel_f[2 : N_MELS + 2] - mel_f[:N_MELS])
    return (weights * enorm[:, None]).astype(np.float32)


_MEL_FB = _mel_filterbank()
_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic


def mel_power(audio: np.ndarray) -> np.ndarray:
    """(n_frames, 40) mel power spectrogram, 10 ms hop, centred frames: what the GE2E encoder eats.

    Equals librosa.feature.melspectrogram(y=audio, sr=16000, n_fft=400, hop_length=160,
    n_mels=40).T (Resemblyzer's front end) up to float rounding.
    """
    x = np.pad(np.asarray(audio, dtype=np.float32), (N_FFT // 2, N_FFT // 2))
    n = 1 + (len(x) - N_FFT) // HOP
    if n <= 0:
        return np.zeros((0, N_MELS), np.float32)
    frames = np.lib.stride_tricks.as_strided(x, shape=(n, N_FFT), strides=(x.strides[0] * HOP, x.strides[0]))
    spec = np.abs(np.fft.rfft(frames * _HANN, axis=1)) ** 2
    return (spec.astype(np.float32) @ _MEL_FB.T).astype(np.float32)


def _weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("speaker diarization needs the 'resemblyzer' package (it ships the GE2E "
                                  "encoder weights); install config/diarization.lock", name="resemblyzer")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.exists():
        raise ModuleNotFoundError(f"resemblyzer is installed but its weight file is missing: {path}",
                                  name="resemblyzer")
    return path


class SpeakerEncoder:
    """GE2E speaker encoder (Resemblyzer's network) on torch. Not thread-safe: callers lock."""

    def __init__(self, device: str = "cpu", threads: int | None = 1) -> None:
        import torch
        from torch import nn

        if threads:
            # The LSTM runs 150 tiny sequential steps per window: with >1 OpenMP thread every
            # step is a barrier, and on a busy 2-core box (Whisper decoding next to us) a
            # descheduled thread stalls them all -- measured 10-20x slower than 1 thread.
            # torch's setting is process-wide; nothing else in the server uses torch.
            torch.set_num_threads(threads)
        self._torch = torch
        self.device = torch.device(device)
        self.lstm = nn.LSTM(N_MELS, EMBEDDING_DIM, 3, batch_first=True)
        self.linear = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM)
        state = torch.load(_weights_path(), map_location="cpu", weights_only=True)["model_state"]
        self.lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self.linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
        self.lstm.to(self.device).eval()
        self.linear.to(self.device).eval()

    def embed(self, mels: np.ndarray) -> np.ndarray:
        """mels: (batch, frames, 40) -> (batch, 256) L2-normalised embeddings."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32)).to(self.device)
            _, (hidden, _) = self.lstm(x)
            e = torch.relu(self.linear(hidden[-1]))
            e = e / torch.clamp(torch.norm(e, dim=1, keepdim=True), min=1e-8)
            return e.cpu().numpy()

    def embed_windows(self, mel: np.ndarray, spans: np.ndarray) -> np.ndarray:
        """(n, 256) embeddings of mel[a:b] for every frame span (a, b); same-length spans batched."""
        out = np.zeros((len(spans), EMBEDDING_DIM), np.float32)
        by_len: dict[int, list[int]] = {}
        for i, (a, b) in enumerate(spans):
            by_len.setdefault(int(b - a), []).append(i)
        for idx in by_len.values():
            for k in range(0, len(idx), _BATCH):
                chunk = idx[k : k + _BATCH]
                out[chunk] = self.embed(np.stack([mel[spans[i][0] : spans[i][1]] for i in chunk]))
        return out


@dataclass(frozen=True)
class WindowEmbeddings:
    """Speaker embeddings of short windows: where each window lies, and its vector."""

    spans: np.ndarray  # (n, 2) seconds
    vectors: np.ndarray  # (n, 256), unit length


def normalize_volume(audio: np.ndarray, regions: list[tuple[float, float]], target_dbfs: float = -30.0) -> np.ndarray:
    """Scale so that the speech RMS sits at target_dbfs (Resemblyzer trains at -30 dBFS)."""
    parts = [audio[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)] for s, e in regions]
    speech = np.concatenate(parts) if parts else audio
    rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64)))) if len(speech) else 0.0
    if rms <= 1e-6:
        return audio
    return (audio * (10 ** (target_dbfs / 20) / rms)).astype(np.float32)


def window_spans(regions: list[tuple[float, float]], window_s: float, step_s: float,
                 min_window_s: float) -> np.ndarray:
    """(n, 2) mel-frame spans of sliding windows inside the regions; a region shorter than a
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
