"""The analytics notebook, run headless top to bottom on a small OUT made by the real flow,
and the queries behind it (tasks/analytics.py) on that OUT and on S3."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tasks import analytics, compaction, tables
from tasks.rows import TranscriptRow
from tests.analytics_out import real_out
from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "analytics.py"
has_diarization = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="the [diarization] extra is not installed")


@pytest.fixture(scope="module")
def out(server, prefect_api, tmp_path_factory) -> Path:
    return real_out(server, tmp_path_factory.mktemp("analytics"))


def run_notebook(out: Path | str, figures: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "BULKSCRIBE_OUT": str(out), "BULKSCRIBE_FIGURES": str(figures), **env}
    environment.pop("DISPLAY", None)
    return subprocess.run([sys.executable, str(NOTEBOOK)], env=environment, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


@has_diarization
def test_notebook_runs_top_to_bottom(out, tmp_path):
    done = run_notebook(out, tmp_path / "figures", BULKSCRIBE_KEYWORD="country")
    assert done.returncode == 0, done.stdout + done.stderr
    png = tmp_path / "figures" / "overview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_notebook_fails_when_a_cell_fails(tmp_path):
    bad = tmp_path / "out"
    (bad / "transcripts").mkdir(parents=True)
    (bad / "transcripts" / "part-0.parquet").write_bytes(b"PAR1 not parquet at all")
    done = run_notebook(bad, tmp_path / "figures")
    assert done.returncode != 0 and "parquet" in (done.stdout + done.stderr).lower()


@has_diarization
def test_queries_on_a_real_out(out):
    o = analytics.Out(str(out))
    t = o.transcripts().collect()
    assert sorted(t["source"].str.split("/").list.last()) == ["jfk.mp3", "three_speakers.ogg", "timit.wav"]
    usage = analytics.daily_usage(o.transcripts()).collect()
    assert set(usage["model"]) == {"Elevenlabs-STT", "Wizper"} and usage["files"].sum() == 3
    assert usage["audio_hours"].sum() == pytest.approx(t["duration_s"].sum() / 3600)
    assert analytics.languages(o.transcripts()).collect()["language"].to_list() == ["en"]
    reasons = analytics.failure_reasons(o.scan("failures")).collect()
    assert reasons["failures"].sum() == 1 and "permanent" in reasons["reason"][0]

    talk = analytics.speaker_talk_time(o.current("segments")).collect()
    three = talk.filter(pl.col("source").str.ends_with("three_speakers.ogg"))
    assert three.height >= 2 and three["share"].sum() == pytest.approx(1.0)
    turns = analytics.turn_taking(o.current("segments")).collect()
    assert turns.filter(pl.col("source").str.ends_with("three_speakers.ogg"))["speaker_changes"].item() >= 1

    rate = analytics.speaking_rate(o.transcripts(), o.current("words")).collect()
    jfk = rate.filter(pl.col("source").str.ends_with("jfk.mp3")).row(0, named=True)
    assert jfk["timed"] and 100 < jfk["wpm"] < 250  # 22 words in about 9 s of speech
    timit = rate.filter(pl.col("source").str.ends_with("timit.wav")).row(0, named=True)
    assert not timit["timed"] and timit["wpm"] > 100

    hits = analytics.keyword_in_context(o.current("words"), "Country", width=4)
    assert hits.height == 2 and set(hits["hit"].str.to_lowercase().str.strip_chars(".,")) == {"country"}
    first = hits.sort("start").row(0, named=True)
    assert first["left"].lower().split()[-2:] == ["what", "your"] and first["right"].lower().split()[0] == "can"
    assert first["link"].startswith("file://") and first["link"].endswith(f"#t={first['start']:.2f}")
    one = analytics.file_words(o.current("words"), first["source"], "Elevenlabs-STT")
    assert one["word_index"].is_sorted() and one.filter(pl.col("type") == "word").height >= 20

    before = {name: o.scan(name).collect().height for name in tables.TABLES}
    compaction.compact(str(out))  # the same answers after compaction
    assert {name: o.scan(name).collect().height for name in tables.TABLES} == before
    assert analytics.keyword_in_context(o.current("words"), "country", width=4).height == 2


def test_latest_transcript_per_source_and_model(tmp_path):
    def row(source: str, model: str, day: int, text: str) -> TranscriptRow:
        return TranscriptRow(source=source, fingerprint=f"fp{day}", request_key=f"{source}{model}{day}", model=model,
                             language="en", options="{}", text=text, duration_s=60.0, cost=0.01, currency="USD",
                             upload_mode="direct", file_size=1, speaker_count=None, run_id="r",
                             transcribed_at=datetime(2026, 3, day, tzinfo=UTC))

    tables.write_part(str(tmp_path), "transcripts", TranscriptRow.table(
        [row("/a.wav", "Wizper", 2, "new"), row("/b.wav", "Wizper", 1, "b")]), part_name="part-2")
    tables.write_part(str(tmp_path), "transcripts", TranscriptRow.table(
        [row("/a.wav", "Wizper", 1, "old"), row("/a.wav", "Elevenlabs-STT", 1, "eleven")]), part_name="part-1")
    latest = analytics.Out(str(tmp_path)).transcripts().sort("source", "model").collect()
    assert latest.select("source", "model", "text").rows() == [
        ("/a.wav", "Elevenlabs-STT", "eleven"), ("/a.wav", "Wizper", "new"), ("/b.wav", "Wizper", "b")]
    usage = analytics.daily_usage(analytics.Out(str(tmp_path)).transcripts()).collect()
    assert usage["files"].sum() == 3


def test_scan_on_s3(s3_env):
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env}).mkdir("analytics-bucket")
    out = "s3://analytics-bucket/stt"
    rows = [TranscriptRow(source=f"s3://archive/{i}.wav", fingerprint="fp", request_key=str(i), model="Wizper",
                          language="fr", options="{}", text="bonjour à tous", duration_s=30.0, cost=0.005,
                          currency="USD", upload_mode="url", file_size=1, speaker_count=None, run_id="r",
                          transcribed_at=datetime(2026, 3, 1, tzinfo=UTC)) for i in range(3)]
    for i in range(3):
        tables.write_part(out, "transcripts", TranscriptRow.table(rows[i:i + 1]), part_name=f"part-{i}")
    langs = analytics.languages(analytics.Out(out).transcripts()).collect()
    assert langs.rows() == [("fr", 3, pytest.approx(90 / 3600))]
    assert analytics.Out(out).scan("words").collect().height == 0


@has_diarization
def test_duckdb_views_expose_the_tables(out):
    import duckdb

    con = duckdb.connect()
    con.execute("SET VARIABLE out = ?", [str(out)])
    con.execute((REPO / "notebooks" / "views.sql").read_text())
    o = analytics.Out(str(out))
    for view, frame in (("transcripts", o.transcripts()), ("failures", o.scan("failures")),
                        ("words", o.current("words")), ("segments", o.current("segments"))):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == frame.collect().height > 0, view
    hours = con.execute("SELECT model, sum(duration_s) / 3600 FROM transcripts GROUP BY model ORDER BY model").fetchall()
    expected = (analytics.daily_usage(o.transcripts()).group_by("model").agg(pl.col("audio_hours").sum())
                .sort("model").collect())
    assert [(m, pytest.approx(h)) for m, h in expected.rows()] == hours


def test_open_failures_leave_out_failures_a_later_transcript_superseded(tmp_path):
    import duckdb

    from tasks.rows import FailureRow

    def failure(source: str, day: int) -> FailureRow:
        return FailureRow(source=source, fingerprint="fp", request_key=None, model="Wizper", error_kind="transient",
                          error_type="ServerError", status_code=503, message="busy", attempts=5, run_id="r",
                          failed_at=datetime(2026, 3, day, tzinfo=UTC))

    def transcript(source: str, day: int) -> TranscriptRow:
        return TranscriptRow(source=source, fingerprint="fp", request_key=source, model="Wizper", language="en",
                             options="{}", text="t", duration_s=1.0, cost=0.0, currency="USD", upload_mode="direct",
                             file_size=1, speaker_count=None, run_id="r", transcribed_at=datetime(2026, 3, day, tzinfo=UTC))

    # a: failed, then transcribed (not failing); b: transcribed, then failed again (failing); c: failed twice
    tables.write_part(str(tmp_path), "failures", FailureRow.table(
        [failure("/a.wav", 1), failure("/b.wav", 3), failure("/c.wav", 1), failure("/c.wav", 2)]), part_name="p1")
    tables.write_part(str(tmp_path), "transcripts", TranscriptRow.table(
        [transcript("/a.wav", 2), transcript("/b.wav", 2)]), part_name="p1")
    current = analytics.Out(str(tmp_path)).open_failures().sort("source").collect()
    assert [(r["source"], r["failed_at"].day) for r in current.iter_rows(named=True)] == [("/b.wav", 3), ("/c.wav", 2)]
    con = duckdb.connect()
    con.execute("SET VARIABLE out = ?", [str(tmp_path)])
    con.execute("\n".join(line for line in (REPO / "notebooks" / "views.sql").read_text().splitlines()
                          if "words" not in line and "segments" not in line))  # this OUT has neither
    assert con.execute("SELECT source FROM open_failures ORDER BY source").fetchall() == [("/b.wav",), ("/c.wav",)]
