"""The faster-whisper engine: one WhisperModel shared by all requests."""

from __future__ import annotations

import logging
import threading

import numpy as np

from stt.server.engine import Transcript, WordTiming
from stt.server.settings import ServerSettings
from stt.server.weights import resolve_model

log = logging.getLogger(__name__)


class WhisperEngine:
    """One WhisperModel shared by all requests; `workers` transcriptions may run at once."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._model = None
        self._weights_name: str | None = None
        self._lock = threading.Lock()

    @property
    def weights_name(self) -> str:
        self.load()
        return self._weights_name or "unknown"

    def load(self) -> None:
        self._get_model()

    def _get_model(self):
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                path, name = resolve_model(self.settings.whisper_model, self.settings.cache_dir)
                log.info("loading Whisper weights %s", name)
                self._model = WhisperModel(
                    path,
                    device="cpu",
                    compute_type=self.settings.compute_type,
                    cpu_threads=self.settings.threads_per_worker(),
                    num_workers=self.settings.workers,
                )
                self._weights_name = name
            return self._model

    def transcribe(self, audio: np.ndarray | str, *, accurate: bool, language: str | None,
                   word_timestamps: bool = False) -> Transcript:
        """Sequential (not batched) decoding: faster-whisper's batched pipeline dropped
        ~20% of words on long audio on this hardware and was no faster on 2 cores."""
        model = self._get_model()
        s = self.settings
        segments, info = model.transcribe(
            audio,
            language=language,
            beam_size=s.accurate_beam_size if accurate else s.fast_beam_size,
            vad_filter=s.vad_filter,
            word_timestamps=word_timestamps,
            condition_on_previous_text=accurate,
        )
        texts: list[str] = []
        words: list[WordTiming] = []
        for seg in segments:  # the generator does the work
            texts.append(seg.text.strip())
            for w in seg.words or ():
                words.append(WordTiming(w.word, float(w.start), float(w.end), float(w.probability)))
        return Transcript(
            text=" ".join(t for t in texts if t),
            language=info.language,
            language_probability=float(info.language_probability),
            duration_s=float(info.duration),
            words=words,
        )
