"""The faster-whisper engine in-process, on the real weights and real speech.

What the engine skips and shares is read from its own counters (model calls, batches,
files without speech), never from timings.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stt.server.audio import SAMPLE_RATE, decode
from stt.server.settings import ServerSettings
from stt.server.whisper_engine import WhisperEngine
from tests.conftest import audio_file, normalize, reference, wer

pytestmark = pytest.mark.real_model

SHORT_CLIPS = ("timit_LDC93S1.wav", "aishell_BAC009S0724W0121.m4a", "leopard_test_de.wav")


@pytest.fixture(scope="module")
def fast() -> WhisperEngine:
    engine = WhisperEngine(ServerSettings(engine_path="fast", max_batch=4))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def legacy() -> WhisperEngine:
    engine = WhisperEngine(ServerSettings(engine_path="legacy"))
    engine.load()
    return engine


def _room_noise(seconds: float) -> np.ndarray:
    return (np.random.default_rng(7).standard_normal(int(seconds * SAMPLE_RATE)) * 0.003).astype(np.float32)


def _delta(engine: WhisperEngine, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in engine.counters().items()}


def test_a_file_without_speech_is_answered_without_language_detection_or_decoding(fast, legacy):
    noise = _room_noise(4.0)
    before = fast.counters()
    result = fast.transcribe(noise, accurate=True, language=None)
    done = _delta(fast, before)
    assert (result.text, result.language, result.duration_s) == ("", None, 4.0)
    assert done["no_speech_files"] == 1
    assert done["language_detections"] == done["encoder_passes"] == done["generate_calls"] == 0
    # A requested language is echoed back, still without work.
    assert fast.transcribe(noise, accurate=True, language="fr").language == "fr"
    # The counters do see the work when there is some: the old path detects a language in noise.
    before = legacy.counters()
    legacy.transcribe(noise, accurate=True, language=None)
    assert _delta(legacy, before)["language_detections"] == 1


def test_one_encoder_pass_serves_language_detection_and_decoding(fast, legacy):
    path = str(audio_file("leopard_test_es.wav"))
    before = fast.counters()
    result = fast.transcribe(path, accurate=True, language=None)
    done = _delta(fast, before)
    assert result.language == "es"
    assert done["encoder_passes"] == 1 and done["language_detections"] == 1
    before = legacy.counters()
    old = legacy.transcribe(path, accurate=True, language=None)
    assert _delta(legacy, before)["encoder_passes"] == 2  # what the old path paid
    assert result.text == old.text


def test_the_fast_path_gives_the_old_paths_text_with_greedy_decoding_too(fast, legacy):
    path = str(audio_file("jfk_inaugural.flac"))
    new = fast.transcribe(path, accurate=False, language=None)
    old = legacy.transcribe(path, accurate=False, language=None)
    assert (new.text, new.language) == (old.text, old.language)


def test_concurrent_short_requests_share_batches_and_get_their_own_text(fast):
    paths = [str(audio_file(name)) for name in SHORT_CLIPS]
    alone = [fast.transcribe(p, accurate=False, language=None) for p in paths]
    together: list[str | None] = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def run(i: int) -> None:
        start.wait()
        together[i] = fast.transcribe(paths[i], accurate=False, language=None).text

    before = fast.counters()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = _delta(fast, before)
    assert together == [r.text for r in alone]
    assert done["batches"] >= 1 and fast.counters()["largest_batch"] >= 2
    assert done["encoder_passes"] == len(paths)  # shared calls, not repeated ones


def test_long_input_in_pieces_loses_and_doubles_no_words_at_the_seams(fast):
    """Three clips with pauses, read back in pieces of at most 12 s of speech: each seam
    falls in a pause, the words on either side of every seam are there exactly once, and
    the text is about as good as in one piece. (Decoded alone or after another clip, the
    ambiguous TIMIT sentence comes out a word or two differently, and which way depends
    on the CPU's kernels: "your dark suit" / "a ducksuit" / "Jadaksew". The bound on WER
    leaves room for that, not for a lost sentence.)"""
    names = ("jfk_inaugural.flac", "timit_LDC93S1.wav", "librispeech_1995-1837-0001.ogg")
    pause = np.zeros(int(2.5 * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([part for name in names for part in (decode(str(audio_file(name))), pause)])
    expected = " ".join(reference(name) for name in names)
    pieced = WhisperEngine(ServerSettings(piece_s=12.0, max_batch=1))
    one = fast.transcribe(audio, accurate=False, language="en")  # pieces of up to 600 s: one here
    before = pieced.counters()
    several = pieced.transcribe(audio, accurate=False, language="en")
    assert _delta(pieced, before)["encoder_passes"] >= 3  # at least one window per piece
    assert several.duration_s == pytest.approx(len(audio) / SAMPLE_RATE)
    words = " ".join(normalize(several.text))
    for phrase in ("and so my fellow", "for your country", "she had", "all year", "it was the first",
                   "built around it"):  # the first and last words of each clip
        assert words.count(phrase) == 1, (phrase, several.text)
    assert wer(expected, several.text) <= wer(expected, one.text) + 0.05
    assert wer(expected, several.text) < 0.15
