"""`bulkscribe evaluate` on the repository's sample clips, through the real flow and the real
server; its WER and DER checked against jiwer and pyannote.metrics called here directly."""

from __future__ import annotations

import shutil
from pathlib import Path

import jiwer
import polars as pl
import pytest
from pydantic import SecretStr
from pyannote.core import Segment, Timeline
from pyannote.database.util import load_rttm
from pyannote.metrics.diarization import DiarizationErrorRate
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

from config.settings import Settings
from flows.cli import main as cli
from flows.evaluate import evaluate, render
from flows.transcribe_archive import run_with_settings
from tests.conftest import SAMPLES

LANGUAGES = {"aishell_BAC009S0724W0121": "zh", "leopard_test_fr": "fr"}  # the others are English
has_diarization = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="the [diarization] extra is not installed")


def settings_for(server, **kw) -> Settings:
    return Settings(api_url=server.api_url, api_key=SecretStr(server.api_key), progress="off", **kw)


def copy_samples(dest: Path, names: list[str] | None = None) -> Path:
    dest.mkdir()
    for f in SAMPLES.iterdir():
        if f.name != "README.md" and (names is None or f.stem in names):
            shutil.copy(f, dest / f.name)
    return dest


def independent_wer(ref: str, hyp: str, language: str) -> tuple[float, int, int]:
    """jiwer on Whisper-normalised text, as the evaluate docs describe it; (wer, errors, words)."""
    norm = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()
    r, h = " ".join(norm(ref).split()), " ".join(norm(hyp).split())
    out = jiwer.process_words(r, h)
    return out.wer, out.substitutions + out.deletions + out.insertions, len(r.split())


def test_wer_on_the_samples_matches_jiwer(prefect_api, server, tmp_path):
    src = copy_samples(tmp_path / "src")
    out = tmp_path / "out"
    result = evaluate(str(src), str(out), settings_for(server), ["Wizper"])

    quality = pl.read_parquet(f"{out}/quality/*.parquet")
    assert {"source", "model", "wer", "cer", "der", "duration_s", "cost", "rtf"} <= set(quality.columns)
    assert quality.height == 6 and set(quality["status"]) == {"scored"}
    transcripts = pl.read_parquet(f"{out}/transcripts/*.parquet")
    errors = words = 0
    for stem in [p.stem for p in SAMPLES.glob("*.txt")]:
        language = LANGUAGES.get(stem, "en")
        row = quality.filter(pl.col("source").str.contains(stem + ".", literal=True)).row(0, named=True)
        text = transcripts.filter(pl.col("source") == row["source"])["text"].item()
        ref = (SAMPLES / f"{stem}.txt").read_text()
        assert row["duration_s"] > 1 and row["cost"] > 0 and row["rtf"] > 0
        if language == "zh":  # no word spaces: CER only
            assert row["wer"] is None
            r = "".join(BasicTextNormalizer()(ref).split())
            h = "".join(BasicTextNormalizer()(text).split())
            assert row["cer"] == pytest.approx(jiwer.cer(r, h), abs=0.005)
            continue
        wer, e, n = independent_wer(ref, text, language)
        assert row["wer"] == pytest.approx(wer, abs=0.005), (stem, row["hypothesis_norm"], text)
        errors, words = errors + e, words + n
        assert row["wer"] < 0.5, (stem, row["reference_norm"], row["hypothesis_norm"])
    falcon = quality.filter(pl.col("source").str.contains("falcon")).row(0, named=True)
    assert falcon["wer"] is None and falcon["der"] is None  # turns but no text; Wizper gives no speakers

    report = render(result)
    assert "per model" in report and "Wizper" in report and "side by side" not in report
    [model_row] = [r for r in report.splitlines() if r.startswith("| Wizper")]
    assert f"{errors / words:.4f}" in model_row  # pooled WER: errors over reference words, all files

    # The transcripts are OUT's normal tables: a later `run` of the same model sends nothing.
    again = run_with_settings(str(src), str(out), settings_for(server, model="Wizper"))
    assert again.transcribed == 0 and again.skipped == 6


@has_diarization
def test_der_and_several_models_side_by_side(prefect_api, server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NANOGPT_API_KEY", server.api_key)
    src = copy_samples(tmp_path / "src", ["falcon_diarization_3spk", "timit_LDC93S1"])
    out = tmp_path / "out"
    code = cli(["evaluate", str(src), "--out", str(out), "--api-url", server.api_url, "--model",
                "Wizper,Elevenlabs-STT", "--diarize", "--language", "en"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "side by side" in printed and "Elevenlabs-STT" in printed and "Wizper" in printed

    quality = pl.read_parquet(f"{out}/quality/*.parquet")
    assert quality.height == 4
    eleven = quality.filter((pl.col("model") == "Elevenlabs-STT") & pl.col("source").str.contains("falcon"))
    row = eleven.row(0, named=True)
    segments = pl.read_parquet(f"{out}/segments/*.parquet").filter(pl.col("source") == row["source"])
    assert segments.height > 0
    hypothesis = pyannote_annotation(segments)
    reference = load_rttm(str(src / "falcon_diarization_3spk.rttm"))["falcon_diarization_3spk"]
    metric = DiarizationErrorRate(collar=0.5, skip_overlap=False)  # md-eval's 0.25 s each side
    expected = metric(reference, hypothesis, uem=Timeline([Segment(0, row["duration_s"])]))
    assert row["der"] == pytest.approx(expected, abs=0.01)
    wizper = quality.filter((pl.col("model") == "Wizper") & pl.col("source").str.contains("falcon")).row(0, named=True)
    assert wizper["der"] is None
    # Only the model that diarizes was asked to: Wizper's transcripts are plain ones a `run` reuses.
    options = pl.read_parquet(f"{out}/transcripts/*.parquet").filter(pl.col("model") == "Wizper")["options"]
    assert all('"diarize": false' in o for o in options)

    # --score-only sends nothing and scores the same transcripts again.
    assert cli(["evaluate", str(src), "--out", str(out), "--model", "Wizper", "--model", "Elevenlabs-STT",
                "--score-only"]) == 0
    capsys.readouterr()
    latest = pl.read_parquet(f"{out}/quality/*.parquet").sort("evaluated_at").tail(4)
    assert latest["rtf"].null_count() == 4  # nothing transcribed by this evaluation
    assert latest.filter(pl.col("source") == row["source"], pl.col("model") == "Elevenlabs-STT")["der"].item() == \
        pytest.approx(row["der"])


def pyannote_annotation(segments: pl.DataFrame):
    from pyannote.core import Annotation

    a = Annotation()
    for i, s in enumerate(segments.iter_rows(named=True)):
        a[Segment(s["start"], s["end"]), i] = s["speaker"]
    return a


def test_no_references_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLES / "timit_LDC93S1.wav", src / "timit.wav")
    assert cli(["evaluate", str(src), "--out", str(tmp_path / "out"), "--score-only"]) == 2
    assert "no references" in capsys.readouterr().err
