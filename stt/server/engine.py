"""Audio decoding and Whisper inference for the embedded server.

Blocking code only: the app runs every call here in a worker thread (CTranslate2 and
PyAV release the GIL), so the event loop keeps answering health checks, 503s and polls
while a long file is transcribed. Results are plain dataclasses, as in faster-whisper.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from stt.server.settings import ServerSettings
from stt.server.weights import resolve_model

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
SUPPORTED = "supported formats: MP3, WAV, M4A/AAC, OGG (Vorbis, Opus), FLAC"


class AudioDecodeError(ValueError):
    """The input is not audio PyAV can decode (the message says why); answered as 400."""


@dataclass
class WordTiming:
    text: str
    start: float
    end: float
    probability: float


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_s: float
    words: list[WordTiming] = field(default_factory=list)


def decode(source: str | BinaryIO) -> np.ndarray:
    """Mono float32 samples at 16 kHz, whatever the container, codec or channel count.

    The format is sniffed from the content, never from a file name or content type the
    client sent (the hosted API's own examples label every upload `audio.mp3`).
    """
    import av  # PyAV, pulled in by faster-whisper
    from faster_whisper.audio import decode_audio

    try:
        samples = decode_audio(source, sampling_rate=SAMPLE_RATE)  # stereo is mixed down
    except (av.error.FFmpegError, av.error.InvalidDataError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__  # str(exc) names our temp file
        raise AudioDecodeError(f"could not decode the audio ({reason}); {SUPPORTED}") from exc
    except (ValueError, TypeError, IndexError, StopIteration) as exc:
        # PyAV raises these for containers without an audio stream or truncated headers.
        raise AudioDecodeError(f"could not decode the audio ({type(exc).__name__}); {SUPPORTED}") from exc
    if samples.size == 0:
        raise AudioDecodeError(f"could not decode the audio (no audio samples in the file); {SUPPORTED}")
    return samples


class Engine:
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

    def load(self):
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

    def transcribe(self, audio: np.ndarray, *, accurate: bool, language: str | None,
                   word_timestamps: bool = False) -> Transcript:
        """Sequential (not batched) decoding: faster-whisper's batched pipeline dropped
        ~20% of words on long audio on this hardware and was no faster on 2 cores."""
        model = self.load()
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
