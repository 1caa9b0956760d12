"""Make a large local audio file fit the speech-to-text API's 3 MB direct-upload limit.

Without a staging bucket, a local file over the limit can only be sent in the request
body, so it has to get smaller first. Two ways, both here and both PyAV + numpy only
(the pipeline's process loads no ML stack and runs no ffmpeg binary):

* `reencode` the whole file to mono Ogg/Opus at a low bitrate (24 kbit/s is ~3 kB/s,
  so about 15 minutes fit in 3 MB; `estimated_reencoded_bytes` says beforehand whether
  it will fit);
* `split_at_silences` into chunks cut where the audio is quietest, each its own small
  Ogg/Opus file, transcribed separately and put back together by `tasks.stitching`.

Everything streams: the source is decoded packet by packet, and splitting holds about one
chunk of 16 kHz mono float32 PCM (600 s = 38 MB), so a multi-hour file never sits in
memory as PCM. Silence detection is plain frame energy (30 ms frames, RMS in dBFS); a
voice-activity model would need the ML stack this process must not load.

Opus details measured with this PyAV build (av 18, libopus): libopus accepts 8, 12, 16,
24 and 48 kHz input and the Ogg muxer stores any of them (the OpusHead keeps the input
rate as information; every Opus decoder outputs 48 kHz or what it is asked for), so the
encoder is fed `sample_rate` directly, no resampling up to 48 kHz. Constrained VBR is
used on purpose: with unconstrained VBR a steady tone came out at 1.77x the requested
bitrate, which would make any size estimate a guess.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import numpy as np

log = logging.getLogger("bulkscribe.audio_prep")

#: PCM rate for silence detection and for the chunks (what speech models use anyway).
PCM_RATE = 16000
FRAME_S = 0.03
#: Cuts are searched in the last fifth of each max_chunk_s window.
SEARCH_FRACTION = 0.2
#: Input rates libopus accepts.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_OPUS_OPTIONS = {"vbr": "constrained"}
_DB_FLOOR = -120.0


class AudioPrepError(ValueError):
    """The input cannot be decoded (or encoded) as audio; the message says which and why."""


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int | None
    channels: int | None
    codec: str | None


@dataclass(frozen=True)
class Chunk:
    index: int
    start_s: float  # offset of this chunk's audio in the original audio
    end_s: float
    data: bytes  # encoded audio of this chunk (Ogg/Opus mono), < max_bytes
    #: Where the part of the file this chunk stands for begins (after the overlap it shares
    #: with the previous chunk); the same as start_s without overlap.
    own_start_s: float = 0.0


def _open(source) -> av.container.InputContainer:
    """Open a path or a binary file-like object (read from its beginning)."""
    if isinstance(source, (str, os.PathLike)):
        target = name = os.fspath(source)
    else:
        target = source
        name = getattr(source, "path", None) or getattr(source, "name", None) or type(source).__name__
        seekable = getattr(source, "seekable", None)
        if callable(seekable) and seekable():
            source.seek(0)
    try:
        container = av.open(target, mode="r")
    except av.error.FFmpegError as exc:
        if isinstance(exc, OSError):  # missing file, no permission: not a content problem
            raise
        raise AudioPrepError(f"{name}: not a readable audio file ({exc})") from exc
    if not container.streams.audio:
        container.close()
        raise AudioPrepError(f"{name}: the container holds no audio stream")
    return container


def _frames(container: av.container.InputContainer) -> Iterator[av.AudioFrame]:
    """Decoded frames of the first audio stream. Corrupt packets are skipped (as ffmpeg
    does) and counted; a stream without a single decodable frame is an error."""
    stream = container.streams.audio[0]
    decoded = corrupt = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets, None)
        except av.error.FFmpegError as exc:
            if isinstance(exc, OSError):
                raise
            raise AudioPrepError(f"{container.name}: unreadable after {decoded} frames ({exc})") from exc
        if packet is None:
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            corrupt += 1
            continue
        for frame in frames:
            decoded += 1
            yield frame
    if corrupt:
        log.warning("%s: skipped %d undecodable packets", container.name, corrupt)
    if not decoded:
        raise AudioPrepError(f"{container.name}: no decodable audio ({corrupt} corrupt packets)")


def _pcm_blocks(source, rate: int) -> Iterator[np.ndarray]:
    """Mono float32 PCM at `rate`, one decoded frame at a time.

    A new resampler is made whenever the decoded format, layout or rate changes
    mid-stream (concatenated MP3s do that): PyAV 18's resampler takes such frames as if
    they had the first rate (1 s at 22.05 kHz after 16 kHz came out as 1.38 s, measured)."""
    container = _open(source)
    try:
        resampler, setup = None, None
        for frame in _frames(container):
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != setup:
                if resampler is not None:
                    for out in resampler.resample(None):
                        yield out.to_ndarray()[0]
                resampler, setup = av.AudioResampler(format="flt", layout="mono", rate=rate), key
            assert resampler is not None
            for out in resampler.resample(frame):
                yield out.to_ndarray()[0]
        if resampler is not None:
            for out in resampler.resample(None):
                yield out.to_ndarray()[0]
    finally:
        container.close()


def _encode_opus(blocks: Iterable[np.ndarray], rate: int, bitrate: int) -> bytes:
    """Mono float32 PCM blocks at `rate` -> Ogg/Opus bytes."""
    if rate not in OPUS_RATES:
        raise ValueError(f"Opus encodes {OPUS_RATES} Hz input, not {rate}")
    buffer = io.BytesIO()
    # bitexact: no random Ogg stream serial, so the same audio encodes to the same bytes and a
    # re-sent request matches its Idempotency-Key (the server refuses a key with other bytes).
    with av.open(buffer, mode="w", format="ogg", options={"fflags": "+bitexact"}) as out:
        try:
            stream = out.add_stream("libopus", rate=rate, layout="mono")
        except (av.codec.codec.UnknownCodecError, av.error.FFmpegError) as exc:
            raise AudioPrepError(f"this PyAV build cannot encode Opus: {exc}") from exc
        stream.bit_rate = bitrate
        stream.format = "flt"
        stream.codec_context.options = dict(_OPUS_OPTIONS)
        # Frames of about a second: PyAV cuts them to the encoder's 20 ms itself, and one
        # encode() call per decoded frame (~1024 samples) cost 40% more CPU, measured.
        pending: list[np.ndarray] = []
        pending_n = 0
        for block in itertools.chain(blocks, [None]):
            if block is not None:
                pending.append(block)
                pending_n += len(block)
            if pending_n >= rate or (block is None and pending_n):
                pcm = np.concatenate(pending) if len(pending) > 1 else pending[0]
                for i in range(0, len(pcm), rate):
                    frame = av.AudioFrame.from_ndarray(pcm[None, i : i + rate], format="flt", layout="mono")
                    frame.sample_rate = rate
                    out.mux(stream.encode(frame))
                pending, pending_n = [], 0
        out.mux(stream.encode(None))
    return buffer.getvalue()


def probe(source) -> AudioInfo:
    """Duration, sample rate, channels and codec of the first audio stream.

    The duration comes from the container or stream header when it states one (no
    decoding); otherwise (e.g. Ogg read from a non-seekable stream) the stream is decoded
    to the end and its samples counted. Header durations can differ slightly from the
    decoded length: Ogg/Opus headers include the encoder pre-skip (~13 ms), MP3 and AAC
    encoder padding depends on the decoder.
    """
    container = _open(source)
    try:
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        def info(duration_s: float) -> AudioInfo:
            return AudioInfo(duration_s, ctx.sample_rate or None, ctx.channels or None, ctx.name or None)

        if container.duration and container.duration > 0:
            return info(container.duration / av.time_base)
        if stream.duration and stream.time_base:
            return info(float(stream.duration * stream.time_base))
        seconds = 0.0
        for frame in _frames(container):
            seconds += frame.samples / frame.sample_rate
        return info(seconds)
    finally:
        container.close()


def reencode(source, *, bitrate: int = 24000, sample_rate: int = 16000) -> bytes:
    """The whole file as mono Ogg/Opus at `bitrate` bit/s (constrained VBR).

    `sample_rate` is the rate the encoder is fed (one of OPUS_RATES); it sets the audio
    bandwidth (16 kHz keeps up to 8 kHz, all speech recognition needs). It is not the
    rate a decoder returns: Opus decodes at 48 kHz unless asked otherwise. Decoding
    streams frame by frame; the encoded bytes are kept in memory, so call this only when
    `estimated_reencoded_bytes` fits the budget.
    """
    return _encode_opus(_pcm_blocks(source, sample_rate), sample_rate, bitrate)


def estimated_reencoded_bytes(duration_s: float, bitrate: int = 24000) -> int:
    """Upper estimate of `reencode`'s (and a chunk's) size for `duration_s` of audio.

    Measured on 60 s of speech, noise, a tone and silence at 12/24/48 kbit/s: Opus
    payload at most 1.017x the bitrate with constrained VBR, Ogg overhead 79.6 B/s
    (a 27-byte page header per second plus one lacing byte per 20 ms packet) and
    ~150 bytes of OpusHead/OpusTags pages. Margins: payload 1.1x, two pages per second,
    1 KiB of fixed headers.
    """
    payload_per_s = bitrate / 8 * 1.1
    lacing_per_s = 50 * (payload_per_s / 50 // 255 + 1)
    return math.ceil(1024 + duration_s * (payload_per_s + lacing_per_s + 2 * 27))


def _cut_point(pcm: np.ndarray, limit: int, min_silence_frames: int) -> int:
    """Where to end a chunk that must not be longer than `limit` samples.

    Frames of 30 ms are measured in dBFS. A frame is silent when it is below
    max(loud - 30 dB, floor + 6 dB), loud and floor being the 95th and 10th percentile of
    the chunk's frames; a chunk whose frames span less than 10 dB (a tone, steady noise)
    has no silence. In the last SEARCH_FRACTION of the window, the
    quietest run of silent frames at least min_silence_s long wins (ties: the longer
    run), else the quietest shorter run; the cut goes to the middle of the quietest
    min_silence_s inside that run. Without any silent frame in the window the cut is
    hard, at `limit`.
    """
    frame = round(FRAME_S * PCM_RATE)
    n = limit // frame
    frames = pcm[: n * frame].reshape(n, frame)
    power = np.einsum("ij,ij->i", frames, frames) / frame  # no chunk-sized temporary
    db = np.maximum(10 * np.log10(power + 1e-30), _DB_FLOOR)
    floor, loud = np.percentile(db, [10, 95])
    if loud - floor < 10:
        return limit
    first = int(n * (1 - SEARCH_FRACTION))
    window = db[first:]
    silent = np.concatenate(([False], window < max(loud - 30, floor + 6), [False]))
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    runs = list(zip(edges[::2], edges[1::2]))  # [start, end) frame indices in the window
    for need in (min_silence_frames, 1):
        candidates = [(float(window[s:e].mean()), -(e - s), s, e) for s, e in runs if e - s >= need]
        if candidates:
            _, _, s, e = min(candidates)
            # Inside the run, the middle of its quietest `need` frames (or the middle one
            # of equally quiet stretches, e.g. in digital silence).
            level = np.convolve(window[s:e], np.ones(need) / need, mode="valid")
            quietest = np.flatnonzero(level <= level.min() + 1e-9)
            at = s + int(quietest[len(quietest) // 2]) + need // 2
            return int(first + at) * frame
    return limit


def split_at_silences(source, *, max_chunk_s: float = 600.0, max_bytes: int = 3 * 1024 * 1024,
                      min_silence_s: float = 0.3, bitrate: int = 24000, overlap_s: float = 0.0) -> Iterator[Chunk]:
    """Chunks of mono Ogg/Opus (16 kHz input, constrained VBR), each < max_bytes, whose own
    parts cover the audio exactly: chunk[i].end_s == chunk[i+1].own_start_s, the first
    starts at 0, the last ends at the decoded duration. Offsets count decoded samples at
    16 kHz (packet timestamps are not used, so a skipped corrupt packet shifts what follows).

    With `overlap_s`, each chunk after the first also carries the last `overlap_s` of the
    previous one (at most a quarter of a chunk), so that what both transcribe there can
    tie their speakers together (`tasks.stitching`).

    Each chunk ends at the quietest silence in the last 20% of max_chunk_s (see
    `_cut_point`), hard at max_chunk_s only when that stretch has no silence at all.
    max_chunk_s is lowered up front when its estimated size does not fit max_bytes, and
    again (chunk re-cut, for the rest of the file too) if an encoded chunk still does.
    The source is decoded as the chunks are consumed; about one chunk of PCM is held.
    """
    if max_chunk_s <= 0 or min_silence_s < 0 or max_bytes <= 0:
        raise ValueError("max_chunk_s and max_bytes must be positive, min_silence_s >= 0")
    per_s = estimated_reencoded_bytes(1.0, bitrate) - estimated_reencoded_bytes(0.0, bitrate)
    fitting_s = (max_bytes - estimated_reencoded_bytes(0.0, bitrate)) / per_s
    if fitting_s < 1.0:
        raise ValueError(f"max_bytes={max_bytes} holds less than a second of Opus at {bitrate} bit/s")
    limit = int(min(max_chunk_s, fitting_s) * PCM_RATE)
    min_run = max(1, math.ceil(min_silence_s / FRAME_S - 1e-9))
    overlap = min(int(overlap_s * PCM_RATE), limit // 4)

    blocks = _pcm_blocks(source, PCM_RATE)
    # The one chunk of PCM held, filled in place. Splitting a 1 h WAV into 600 s chunks
    # raised peak RSS by 46 MB this way, by 130 MB with a list of blocks + np.concatenate.
    pcm = np.empty(limit + PCM_RATE, np.float32)
    held = start = index = lead = 0  # lead: samples at the head shared with the previous chunk
    eof = False
    while True:
        if not eof and held <= limit:
            block = next(blocks, None)
            if block is None:
                eof = True
            else:
                if held + len(block) > len(pcm):  # a decoded frame longer than the slack
                    grown = np.empty(held + len(block) + PCM_RATE, np.float32)
                    grown[:held] = pcm[:held]
                    pcm = grown
                pcm[held : held + len(block)] = block
                held += len(block)
            continue
        if held <= lead:
            return
        cut = held if held <= limit else max(_cut_point(pcm[:held], limit, min_run), min(held, lead + limit // 2))
        data = _encode_opus((pcm[:cut],), PCM_RATE, bitrate)
        if len(data) >= max_bytes:
            smaller = int(cut * 0.9 * max_bytes / len(data))
            if smaller < PCM_RATE:
                raise AudioPrepError(f"cannot encode even one second under {max_bytes} bytes")
            log.warning("chunk of %.1f s encoded to %d bytes >= %d; chunks now <= %.1f s",
                        cut / PCM_RATE, len(data), max_bytes, smaller / PCM_RATE)
            limit = smaller
            overlap = min(overlap, limit // 4)
            continue
        yield Chunk(index=index, start_s=start / PCM_RATE, end_s=(start + cut) / PCM_RATE, data=data,
                    own_start_s=(start + lead) / PCM_RATE)
        index += 1
        lead = min(overlap, cut)
        shift = cut - lead
        start += shift
        pcm[: held - shift] = pcm[shift:held]
        held -= shift
