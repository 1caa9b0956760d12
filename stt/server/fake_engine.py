"""A deterministic engine for fast tests and scale benchmarks (`BULKSCRIBE_SERVER_ENGINE=fake`).

It decodes the audio for real (bad audio is still a 400, durations and charges are real)
but replaces inference by a function of the decoded samples: one word every 0.4 s of
audio (at least one), drawn from a fixed vocabulary by a hash of the samples, so the same file always
gets the same words and different files (almost always) different ones. Cost: the
decode plus a hash, about a millisecond for a short clip, so a benchmark can push
100,000 files through the whole pipeline.
"""

from __future__ import annotations

import hashlib

import numpy as np

from stt.server.audio import SAMPLE_RATE, decode
from stt.server.engine import Transcript, WordTiming

_VOCABULARY = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
               "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")
_WORD_EVERY_S = 0.4
_WORD_LENGTH_S = 0.3


class FakeEngine:
    weights_name = "fake-engine"

    def load(self) -> None:
        """Nothing to load."""

    def transcribe(self, audio: np.ndarray | str, *, accurate: bool, language: str | None,
                   word_timestamps: bool = False) -> Transcript:
        samples = decode(audio) if isinstance(audio, str) else audio
        duration_s = len(samples) / SAMPLE_RATE
        seed = hashlib.sha256(np.ascontiguousarray(samples).tobytes()).digest()
        count = max(1, int(duration_s // _WORD_EVERY_S))  # even a tiny clip says something
        words = [
            WordTiming(_VOCABULARY[(seed[i % len(seed)] + i) % len(_VOCABULARY)], round(i * _WORD_EVERY_S, 3),
                       round(min(i * _WORD_EVERY_S + _WORD_LENGTH_S, duration_s), 3), 1.0)
            for i in range(count)
        ]
        return Transcript(
            text=" ".join(w.text for w in words), language=language or "en", language_probability=1.0,
            duration_s=duration_s, words=words if word_timestamps else [],
        )
