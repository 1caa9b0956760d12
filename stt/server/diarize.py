"""The diarizer's public names, where the server has always imported them from.

The implementation lives in the ``stt.server.diarization`` package, one concept per module.
"""

from stt.server.diarization import (
    AudioEvent,
    Diarizer,
    DiarizerConfig,
    Turn,
    assign_speakers,
    speaker_at,
)

__all__ = ["AudioEvent", "Diarizer", "DiarizerConfig", "Turn", "assign_speakers", "speaker_at"]
