"""What the server needs from a speech-to-text engine, and what an engine gives back.

The server talks to an `Engine` only through this protocol, so the faster-whisper engine
(`stt.server.whisper_engine`) and the deterministic fake engine used by fast tests and
scale benchmarks are interchangeable. Results are plain dataclasses, as in faster-whisper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class WordTiming:
    text: str
    start: float
    end: float
    probability: float


@dataclass
class Transcript:
    text: str
    language: str | None  # None: nothing was said, so no language was detected
    language_probability: float
    duration_s: float
    words: list[WordTiming] = field(default_factory=list)


class Engine(Protocol):
    @property
    def weights_name(self) -> str:
        """Human-readable name of the weights (reported in answers' metadata)."""
        ...

    def load(self) -> None:
        """Load the model (once; later calls return at once). Blocking."""
        ...

    def transcribe(self, audio: np.ndarray | str, *, accurate: bool, language: str | None,
                   word_timestamps: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float32 samples, or an audio file by path. Blocking."""
        ...
