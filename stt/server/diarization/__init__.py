"""Speaker diarization and audio-event tagging for the embedded server (see diarizer.py)."""

from stt.server.diarization.assignment import assign_speakers, speaker_at
from stt.server.diarization.diarizer import Diarizer
from stt.server.diarization.types import AudioEvent, DiarizerConfig, Turn

__all__ = ["AudioEvent", "Diarizer", "DiarizerConfig", "Turn", "assign_speakers", "speaker_at"]
