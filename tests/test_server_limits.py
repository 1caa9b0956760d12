"""What one key holder can make the server spend (memory, temp disk) and what it leaves on
disk and in its logs (private files, no presigned-URL credentials). Fake engine throughout:
the limits are the server's, not the model's."""

from __future__ import annotations

import logging
import stat
import wave
from pathlib import Path

import httpx
import pytest

from stt.server.launcher import EmbeddedServer
from stt.server.logs import RedactQueries, redact
from stt.server.store import Store
from tests.conftest import audio_file
from tests.fake_server import file_server, in_process_server

FAKE = {"BULKSCRIBE_SERVER_ENGINE": "fake"}
TIMIT = "timit_LDC93S1.wav"


def silent_wav(path: Path, megabytes: int) -> Path:
    """A 16 kHz mono 16-bit WAV of silence, `megabytes` long (written in blocks)."""
    block = b"\0" * (1 << 20)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        for _ in range(megabytes):
            w.writeframes(block)
    return path


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_key_without_money_gets_its_402_for_100_mb_without_the_server_growing(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    silent_wav(folder / "silence.wav", 100)  # 54.6 min: 0.55 USD
    with file_server(folder) as url, EmbeddedServer(balance_usd=0.0, env=FAKE, url_allowlist=("127.0.0.1",)) as srv:
        assert srv.pid is not None
        before = memory_kb(srv.pid, "VmRSS")
        r = httpx.post(srv.api_url + "/transcribe", headers={"x-api-key": srv.api_key}, trust_env=False,
                       json={"audioUrl": f"{url}/silence.wav", "model": "Wizper"}, timeout=120)
        peak = memory_kb(srv.pid, "VmHWM")
    assert r.status_code == 402 and "balance" in r.json()["message"], r.text
    print(f"server RSS before {before / 1024:.0f} MB, peak {peak / 1024:.0f} MB")
    assert peak - before < 100 * 1024


@pytest.mark.anyio
async def test_past_the_temp_disk_budget_downloads_and_uploads_get_503(tmp_path, files_url):
    size = audio_file(TIMIT).stat().st_size  # 93.6 kB
    async with in_process_server(tmp_path, temp_disk_budget_bytes=size // 2, url_allowlist="127.0.0.1") as api:
        for r in (await api.post("/transcribe", json={"audioUrl": f"{files_url}/{TIMIT}"}),
                  await api.post("/transcribe", files={"audio": (TIMIT, audio_file(TIMIT).read_bytes())})):
            assert r.status_code == 503 and "disk" in r.json()["message"], r.text
            assert int(r.headers["retry-after"]) > 0
        admission = api.app.state.server.admission
        assert admission.snapshot()["disk_used"] == 0 and admission.snapshot()["tickets"] == 0  # all released
    async with in_process_server(tmp_path / "roomy", temp_disk_budget_bytes=size, url_allowlist="127.0.0.1") as api:
        r = await api.post("/transcribe", json={"audioUrl": f"{files_url}/{TIMIT}"})
        assert r.status_code == 200, r.text


def test_the_database_and_its_wal_are_private_even_if_they_existed_world_readable(tmp_path):
    db = tmp_path / "db" / "server.sqlite3"
    store = Store(db)
    store.ensure_key("k", 1.0)  # something written: the WAL files exist
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    store.close()
    db.chmod(0o644)
    Store(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


@pytest.mark.anyio
async def test_job_audio_waits_in_a_private_folder(tmp_path):
    async with in_process_server(tmp_path) as api:
        jobs_dir = api.app.state.server.jobs_dir
        assert stat.S_IMODE(jobs_dir.stat().st_mode) == 0o700


def test_presigned_url_credentials_never_reach_the_server_log(tmp_path, files_url):
    secret = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDSECRETCRED&X-Amz-Signature=deadbeefsig"
    log_path = tmp_path / "server.log"
    with EmbeddedServer(env=FAKE, log_path=log_path, url_allowlist=(f"127.0.0.1:{files_url.rsplit(':', 1)[1]}",)) \
            as srv, httpx.Client(trust_env=False, timeout=60, headers={"x-api-key": srv.api_key}) as http:
        for url in (f"{files_url}/{TIMIT}?{secret}",  # fetched and transcribed
                    f"{files_url}/missing.wav?{secret}",  # upstream 404
                    f"http://127.0.0.2:9/x.wav?{secret}",  # refused by the guard
                    f"{files_url}/redirect?to=http://127.0.0.3:9/x.wav?{secret}"):  # redirect refused
            http.post(srv.api_url + "/transcribe", json={"audioUrl": url, "model": "Wizper"})
        http.post(srv.api_url + "/transcribe", json={"audioUrl": f"{files_url}/{TIMIT}?{secret}",
                                                     "model": "No-Such-Model"})
    text = log_path.read_text()
    assert "not fetched" in text  # the refusals were logged...
    assert "AKIDSECRETCRED" not in text and "deadbeefsig" not in text and "X-Amz-" not in text  # ...not the URLs


def test_redaction_of_urls_in_any_log_record():
    url = "https://bucket.s3.amazonaws.com/a.wav?X-Amz-Credential=AKID&X-Amz-Signature=abc"
    assert redact(f"GET {url} 200") == "GET https://bucket.s3.amazonaws.com/a.wav?<redacted> 200"
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "HTTP Request: %s %s", ("GET", url), None)
    assert RedactQueries().filter(record)
    assert record.getMessage() == "HTTP Request: GET https://bucket.s3.amazonaws.com/a.wav?<redacted>"
