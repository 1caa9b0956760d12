"""Audio decoding for the embedded server: any container/codec PyAV reads, to 16 kHz mono float32.

Blocking code: the server runs it in worker threads (PyAV releases the GIL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import av

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


def probe_duration(path: str) -> float:
    """Seconds of audio in the file, read from the container or stream header when it states
    them, so that a price check costs almost nothing whatever the file's size.

    Without a stated duration (e.g. a WAV streamed with an unknown length, some Ogg files)
    the audio is decoded frame by frame and its samples counted: memory stays flat, only
    time grows with the length. Header durations can differ slightly from the decoded
    length (encoder padding, Opus pre-skip). Non-audio raises AudioDecodeError.
    """
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"could not decode the audio (no audio stream in the file); {SUPPORTED}")
            stream = container.streams.audio[0]
            seconds = _header_seconds(container, stream)
            if seconds is None:
                seconds = sum(f.samples / f.sample_rate for f in container.decode(stream) if f.sample_rate)
    except (av.error.FFmpegError, av.error.InvalidDataError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise AudioDecodeError(f"could not decode the audio ({reason}); {SUPPORTED}") from exc
    except (ValueError, TypeError, IndexError, StopIteration) as exc:
        if isinstance(exc, AudioDecodeError):
            raise
        raise AudioDecodeError(f"could not decode the audio ({type(exc).__name__}); {SUPPORTED}") from exc
    if seconds <= 0:
        raise AudioDecodeError(f"could not decode the audio (no audio samples in the file); {SUPPORTED}")
    return float(seconds)


def _header_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        import av

        return container.duration / av.time_base
    return None
