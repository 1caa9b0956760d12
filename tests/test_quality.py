"""tasks.quality: normalisation, WER/CER, DER and reference loading, checked against jiwer and
pyannote.metrics called directly."""

from __future__ import annotations

import json
import shutil

import jiwer
import pytest
from pyannote.core import Annotation, Segment, Timeline
from pyannote.database.util import load_rttm
from pyannote.metrics.diarization import DiarizationErrorRate

from tasks import quality
from tasks.quality import Turn
from tests.conftest import SAMPLES


def test_normalisation_is_whispers():
    assert quality.normalise("IT WAS THE FIRST GREAT SORROW", "en") == "it was the 1st great sorrow"
    assert quality.normalise("Hello, (music) Mr. Smith!", "en-US") == "hello mister smith"
    assert quality.normalise("Sous le consulat, il devient conservateur.", "fr") == \
        "sous le consulat il devient conservateur"
    assert quality.normalise("广州市 房地产。", "zh") == "广州市房地产"


def test_wer_and_cer_match_jiwer():
    ref, hyp = "She had your dark suit in greasy wash water all year.", "She had your duck suit in greasy washwater all year"
    s = quality.score_text(ref, hyp, "en")
    r, h = quality.normalise(ref, "en"), quality.normalise(hyp, "en")
    assert s.wer == pytest.approx(jiwer.wer(r, h)) and s.cer == pytest.approx(jiwer.cer(r, h))
    assert (s.ref_words, s.word_errors) == (11, 3)  # dark->duck, wash water->washwater
    zh = quality.score_text("广州市房地产中介协会分析", "广州市房地產中介協會分析", "zh")
    assert zh.wer is None and zh.cer == pytest.approx(3 / 12)
    empty = quality.score_text("", "anything", "en")
    assert empty.wer is None and empty.cer is None


def test_der_matches_pyannote_with_a_quarter_second_collar():
    reference = quality.parse_rttm((SAMPLES / "falcon_diarization_3spk.rttm").read_text())
    assert [t.speaker for t in reference] == ["speaker_1", "speaker_2", "speaker_3"]
    hypothesis = [Turn(1.9, 3.7, "A"), Turn(6.0, 9.0, "B"), Turn(9.0, 11.0, "A"), Turn(12.6, 18.0, "C")]
    ours = quality.score_diarization(reference, hypothesis, 18.6)

    ref = load_rttm(str(SAMPLES / "falcon_diarization_3spk.rttm"))["falcon_diarization_3spk"]
    hyp = Annotation()
    for i, t in enumerate(hypothesis):
        hyp[Segment(t.start, t.end), i] = t.speaker
    uem = Timeline([Segment(0, 18.6)])
    assert ours.der == pytest.approx(DiarizationErrorRate(collar=0.5)(ref, hyp, uem=uem), abs=1e-9)
    # Scored: each turn less 0.25 s at either end (10.8 s); 9.0 to 10.85 s is speaker_2 labelled A.
    assert ours.der == pytest.approx(1.85 / (2.2 + 4.9 + 5.2 - 3 * 0.5), abs=1e-6)
    shifted = [Turn(t.start + 0.2, t.end + 0.2, t.speaker) for t in reference]  # inside the collar
    assert quality.score_diarization(reference, shifted, 18.6).der == pytest.approx(0.0)


def test_references_from_siblings_and_manifests(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "timit_LDC93S1.wav", src / "sub" / "timit.wav")
    shutil.copy(SAMPLES / "timit_LDC93S1.txt", src / "sub" / "timit.txt")
    shutil.copy(SAMPLES / "falcon_diarization_3spk.ogg", src / "three.ogg")
    shutil.copy(SAMPLES / "falcon_diarization_3spk.rttm", src / "three.rttm")
    shutil.copy(SAMPLES / "leopard_test_fr.wav", src / "fr.wav")  # no reference: not evaluated
    refs = quality.load_references(str(src))
    assert sorted(refs) == [str(src / "sub" / "timit.wav"), str(src / "three.ogg")]
    assert refs[str(src / "sub" / "timit.wav")].text.startswith("She had your dark suit")
    assert len(refs[str(src / "three.ogg")].turns) == 3

    (src / "references.csv").write_text("path,text,language\nfr.wav,\"Sous le consulat, il devient\",fr\n")
    refs = quality.load_references(str(src))
    assert refs[str(src / "fr.wav")].language == "fr" and len(refs) == 3

    manifest = tmp_path / "elsewhere.json"
    manifest.write_text(json.dumps([{"file": "src/sub/timit.wav", "reference": "override", "language": "en"},
                                    {"path": "src/missing.wav", "text": "not under SOURCE"}]))
    refs = quality.load_references(str(src), str(manifest))
    assert refs[str(src / "sub" / "timit.wav")].text == "override" and len(refs) == 2  # given: SOURCE's CSV unread
