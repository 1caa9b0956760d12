"""One request's transcription with faster-whisper's window logic, fed one speech piece at a time.

`WhisperModel.transcribe` wants the whole file in memory and, when asked to detect the
language, encodes the first 30-second window twice (once to detect, once to decode).
Here each piece of speech (see `stt.server.speech`) goes through faster-whisper's own
`generate_segments` (same windows, prompts, fallbacks and word alignment), with:
- one encoder pass for the first window: its output serves language detection, then
  decoding (faster-whisper's `generate_segments` accepts it);
- the language detected once, on the first piece (as faster-whisper detects it on the
  first 30 s of speech), and kept for the rest;
- the previous text carried over each seam as the next piece's prompt, as faster-whisper
  carries it from one window to the next (`condition_on_previous_text`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    Segment,
    TranscriptionOptions,
    get_suppressed_tokens,
    pad_or_trim,
    restore_speech_timestamps,
)

from stt.server.audio import SAMPLE_RATE
from stt.server.engine import Transcript, WordTiming
from stt.server.features import log_mel

#: WhisperModel.transcribe's defaults, so that both paths decode with the same options.
_DEFAULTS: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(WhisperModel.transcribe).parameters.items()
    if p.default is not inspect.Parameter.empty
}
_PROMPT_TOKENS = 223  # what get_prompt keeps of the previous text (max_length // 2 - 1)


@dataclass
class PieceDecoder:
    """Transcribes a request's speech pieces in order; `transcript()` gives the result."""

    model: WhisperModel
    language: str | None  # None: detect on the first piece
    beam_size: int
    condition_on_previous_text: bool
    word_timestamps: bool = False
    language_probability: float = 1.0
    texts: list[str] = field(default_factory=list)
    words: list[WordTiming] = field(default_factory=list)
    _previous: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.model.model.is_multilingual:  # an English-only model: nothing to detect
            self.language = "en"

    def features(self, samples: np.ndarray) -> np.ndarray:
        """A piece's log-Mel features (CPU work outside the model: do it before `add`)."""
        return log_mel(samples, self.model.feature_extractor)

    def add(self, regions: list[tuple[int, int]], features: np.ndarray) -> None:
        """Transcribe one piece: `features` of the speech of `regions` (file sample ranges) glued."""
        content_frames = features.shape[-1] - 1
        if content_frames <= 0:
            return
        first = pad_or_trim(features[:, :min(self.model.feature_extractor.nb_max_frames, content_frames)])
        encoded = self.model.encode(first)
        if self.language is None:
            self.language, self.language_probability = _top_language(self.model, encoded)
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                              language=self.language)
        segments = self.model.generate_segments(features, tokenizer, self._options(tokenizer), False, encoded)
        chunks = [{"start": start, "end": end} for start, end in regions]
        for segment in restore_speech_timestamps(segments, chunks, SAMPLE_RATE):
            self._keep(segment)

    def transcript(self, duration_s: float) -> Transcript:
        return Transcript(
            text=" ".join(t for t in self.texts if t),
            language=self.language,
            language_probability=self.language_probability if self.language else 0.0,
            duration_s=duration_s,
            words=self.words,
        )

    def _keep(self, segment: Segment) -> None:
        self.texts.append(segment.text.strip())
        for w in segment.words or ():
            self.words.append(WordTiming(w.word, float(w.start), float(w.end), float(w.probability)))
        if segment.temperature > _DEFAULTS["prompt_reset_on_temperature"]:
            self._previous = []  # faster-whisper drops the prompt after a high-temperature window
        else:
            self._previous = (self._previous + list(segment.tokens))[-_PROMPT_TOKENS:]

    def _options(self, tokenizer: Tokenizer) -> TranscriptionOptions:
        d = _DEFAULTS
        names = [f for f in TranscriptionOptions.__dataclass_fields__ if f in d]
        options: dict[str, Any] = {name: d[name] for name in names}
        options.update(
            beam_size=self.beam_size,
            condition_on_previous_text=self.condition_on_previous_text,
            word_timestamps=self.word_timestamps,
            temperatures=list(d["temperature"]),
            suppress_tokens=get_suppressed_tokens(tokenizer, d["suppress_tokens"]),
            # The text so far, as the prompt of this piece's first window.
            initial_prompt=list(self._previous) if self.condition_on_previous_text and self._previous else None,
        )
        return TranscriptionOptions(**options)


def _top_language(model: WhisperModel, encoded: object) -> tuple[str, float]:
    """The most probable language of an encoded window (faster-whisper's detect_language
    with one segment also returns its top language, whatever the threshold)."""
    token, probability = model.model.detect_language(encoded)[0][0]
    return token[2:-2], float(probability)
