"""Audio decoding for the embedded server: any container/codec PyAV reads, to 16 kHz mono float32.

Three ways in, by what the caller can afford: `probe_duration` reads the header (a price
check costs nothing, whatever the file's size), `stream` decodes block by block (memory
stays flat however long the file), `decode` returns the whole array (the diarizer needs it).
The samples are the same in all three: faster-whisper's own conversion (s16 resampling,
then /32768), so the engine gives the same text from a path as from `decode`'s array.

Blocking code: the server runs it in worker threads (PyAV releases the GIL).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import av

SAMPLE_RATE = 16_000
SUPPORTED = "supported formats: MP3, WAV, M4A/AAC, OGG (Vorbis, Opus), FLAC"
_NO_SAMPLES = f"could not decode the audio (no audio samples in the file); {SUPPORTED}"


class AudioDecodeError(ValueError):
    """The input is not audio PyAV can decode (the message says why); answered as 400."""


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """PyAV's and FFmpeg's many failure types, as one AudioDecodeError saying why."""
    import av

    try:
        yield
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, av.error.InvalidDataError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__  # str(exc) names our temp file
        raise AudioDecodeError(f"could not decode the audio ({reason}); {SUPPORTED}") from exc
    except (ValueError, TypeError, IndexError, StopIteration) as exc:
        # PyAV raises these for containers without an audio stream or truncated headers.
        raise AudioDecodeError(f"could not decode the audio ({type(exc).__name__}); {SUPPORTED}") from exc


def decode(source: str | BinaryIO) -> np.ndarray:
    """Mono float32 samples at 16 kHz, whatever the container, codec or channel count.

    The format is sniffed from the content, never from a file name or content type the
    client sent (the hosted API's own examples label every upload `audio.mp3`).
    """
    from faster_whisper.audio import decode_audio

    with _decode_errors():
        samples = decode_audio(source, sampling_rate=SAMPLE_RATE)  # stereo is mixed down
    if samples.size == 0:
        raise AudioDecodeError(_NO_SAMPLES)
    return samples


def stream(source: str | np.ndarray, block_samples: int) -> Iterator[np.ndarray]:
    """The audio as consecutive blocks of exactly `block_samples` samples (the last one
    shorter), decoded as they are needed: memory holds about one block, not the file.

    An array is cut into views. Undecodable input raises AudioDecodeError, possibly after
    some blocks were given (a file truncated in the middle).
    """
    if isinstance(source, np.ndarray):
        if source.size == 0:
            raise AudioDecodeError(_NO_SAMPLES)
        for start in range(0, len(source), block_samples):
            yield source[start:start + block_samples]
        return
    given = 0
    for block in _reblock(_decoded(source, block_samples), block_samples):
        given += len(block)
        yield block
    if given == 0:
        raise AudioDecodeError(_NO_SAMPLES)


def _decoded(path: str, group_samples: int) -> Iterator[np.ndarray]:
    """faster_whisper.audio.decode_audio, one resampled group of frames at a time."""
    import av

    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        with _decode_errors(), av.open(path, mode="r", metadata_errors="ignore") as container:
            fifo = av.audio.fifo.AudioFifo()
            for frame in itertools.chain(_grouped(_valid(container.decode(audio=0)), fifo, group_samples), [None]):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
    finally:
        del resampler
        gc.collect()  # PyAV's resampler objects are freed only by a collection (faster-whisper #390)


def _valid(frames: Iterable[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    import av

    iterator = iter(frames)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def _grouped(frames: Iterable[av.AudioFrame], fifo: av.AudioFifo, num_samples: int) -> Iterator[av.AudioFrame]:
    for frame in frames:
        frame.pts = None  # no timestamp check: some files have gaps or jumps
        fifo.write(frame)
        if fifo.samples >= num_samples and (group := fifo.read()) is not None:
            yield group
    if fifo.samples > 0 and (rest := fifo.read()) is not None:
        yield rest


def _reblock(pieces: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    pending: list[np.ndarray] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += len(piece)
        if held < size:
            continue
        joined = np.concatenate(pending)
        cut = len(joined) - len(joined) % size
        for start in range(0, cut, size):
            yield joined[start:start + size]
        pending, held = [joined[cut:]], len(joined) - cut
    if held:
        yield np.concatenate(pending)


def probe_duration(path: str) -> float:
    """Seconds of audio in the file, read from the container or stream header when it states
    them, so that a price check costs almost nothing whatever the file's size.

    Without a stated duration (e.g. a WAV streamed with an unknown length, some Ogg files)
    the audio is decoded frame by frame and its samples counted: memory stays flat, only
    time grows with the length. Header durations can differ slightly from the decoded
    length (encoder padding, Opus pre-skip), and a crafted header can lie: settle the final
    charge on the decoded duration. Non-audio raises AudioDecodeError.
    """
    import av

    with _decode_errors(), av.open(path, metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"could not decode the audio (no audio stream in the file); {SUPPORTED}")
        stream_ = container.streams.audio[0]
        seconds = _header_seconds(container, stream_)
        if seconds is None:
            seconds = sum(f.samples / f.sample_rate for f in container.decode(stream_) if f.sample_rate)
    if seconds <= 0:
        raise AudioDecodeError(_NO_SAMPLES)
    return float(seconds)


def _header_seconds(container: av.container.InputContainer, stream_: av.AudioStream) -> float | None:
    if stream_.duration and stream_.time_base:
        return float(stream_.duration * stream_.time_base)
    if container.duration and container.duration > 0:
        import av

        return container.duration / av.time_base
    return None
