"""The faster-whisper engine: one WhisperModel shared by all requests.

Two paths, chosen by `engine_path` (BULKSCRIBE_SERVER_ENGINE_PATH):
- "fast" (default): speech detection streams the file first, and a file without speech
  is answered at once (no language detection, no decoding); speech is then read and
  transcribed one piece at a time (`piece_s`), so memory does not grow with the file's
  length; the first window's encoder output serves both language detection and decoding;
  concurrent requests' model calls share batches (`stt.server.batcher`).
- "legacy": `WhisperModel.transcribe` on the whole decoded file, one request at a time,
  as before; kept so that benchmarks can measure the difference in one run.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.vad import VadOptions

from stt.server.audio import SAMPLE_RATE, stream
from stt.server.batcher import Batcher
from stt.server.decoding import PieceDecoder
from stt.server.engine import Transcript, WordTiming
from stt.server.settings import ServerSettings, cuda_devices
from stt.server.speech import SpeechMap, find_speech, pieces
from stt.server.weights import resolve_model

log = logging.getLogger(__name__)


class WhisperEngine:
    """One WhisperModel shared by all requests; `settings.engine_slots()` transcriptions may
    be inside at once, their model calls batched together."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._model: WhisperModel | None = None
        self._batcher: Batcher | None = None
        self._weights_name: str | None = None
        self._lock = threading.Lock()
        self._no_speech = 0

    @property
    def weights_name(self) -> str:
        self.load()
        return self._weights_name or "unknown"

    def load(self) -> None:
        self._get_model()

    def counters(self) -> dict[str, int]:
        """Work done and skipped since start-up: model calls, batches, files without speech."""
        self.load()
        assert self._batcher is not None
        with self._lock:
            return {**self._batcher.counters.as_dict(), "no_speech_files": self._no_speech}

    def _get_model(self) -> WhisperModel:
        with self._lock:
            if self._model is None:
                s = self.settings
                path, name = resolve_model(s.whisper_model, s.cache_dir)
                device = s.resolved_device()
                log.info("loading Whisper weights %s on %s (%d worker(s) x %d thread(s), %s)", name, device,
                         s.workers, s.threads_per_worker(), s.resolved_compute_type())
                # On GPUs, one replica per GPU; on the CPU, `workers` replicas.
                gpus = list(range(max(1, min(s.workers, cuda_devices())))) if device == "cuda" else 0
                model = WhisperModel(path, device=device, device_index=gpus, compute_type=s.resolved_compute_type(),
                                     cpu_threads=s.threads_per_worker(), num_workers=1 if device == "cuda" else s.workers)
                batch = s.max_batch if s.engine_path == "fast" else 1
                self._batcher = Batcher(model.model, max_batch=batch, threads=s.workers)
                model.model = self._batcher  # every CTranslate2 call now goes through the batcher
                self._model, self._weights_name = model, name
            return self._model

    def transcribe(self, audio: np.ndarray | str, *, accurate: bool, language: str | None,
                   word_timestamps: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float32 samples, or an audio file by path (streamed)."""
        if self.settings.engine_path == "legacy":
            return self._legacy(audio, accurate, language, word_timestamps)
        model = self._get_model()
        s = self.settings
        speech = self._speech(audio)
        decoder = PieceDecoder(model, language, s.accurate_beam_size if accurate else s.fast_beam_size,
                               condition_on_previous_text=accurate, word_timestamps=word_timestamps)
        if not speech.regions:
            with self._lock:
                self._no_speech += 1
            return decoder.transcript(speech.duration_s)
        groups = speech.groups(int(s.piece_s * SAMPLE_RATE))
        assert self._batcher is not None
        for group, samples in zip(groups, pieces(audio, groups)):
            features = decoder.features(samples)
            del samples
            with self._batcher.session():  # from here on, mostly model calls
                decoder.add(group, features)
        return decoder.transcript(speech.duration_s)

    def _speech(self, audio: np.ndarray | str) -> SpeechMap:
        """Where the speech is; without the VAD filter, the whole file in pieces of `piece_s`."""
        s = self.settings
        if s.vad_filter:
            return find_speech(audio, VadOptions(max_speech_duration_s=s.piece_s))
        samples = sum(len(b) for b in stream(audio, 30 * SAMPLE_RATE))
        step = int(s.piece_s * SAMPLE_RATE)
        return SpeechMap([(i, min(samples, i + step)) for i in range(0, samples, step)], samples)

    def _legacy(self, audio: np.ndarray | str, accurate: bool, language: str | None,
                word_timestamps: bool) -> Transcript:
        """Sequential (not batched) decoding: faster-whisper's batched pipeline dropped
        ~20% of words on long audio on this hardware and was no faster on 2 cores."""
        from stt.server.audio import decode

        model = self._get_model()
        s = self.settings
        segments, info = model.transcribe(
            decode(audio) if isinstance(audio, str) else audio,
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
