"""Audio decoding for the embedded server: any container/codec PyAV reads, to 16 kHz mono float32.

Blocking code: the server runs it in worker threads (PyAV releases the GIL).
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

SAMPLE_RATE = 16_000
SUPPORTED = "supported formats: MP3, WAV, M4A/AAC, OGG (Vorbis, Opus), FLAC"


class AudioDecodeError(ValueError):
    """The input is not audio PyAV can decode (the message says why); answered as 400."""


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
