"""The embedded server's contract on the fake engine, in-process: answers, errors, money.

Real app, real SQLite, real decoding (PyAV); only the words are invented (see
`stt.server.fake_engine`), so every status code is checked in seconds without weights.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from stt.contract import MAX_UPLOAD_BYTES, TranscribeResponse
from stt.server.engine import Transcript
from stt.server.fake_engine import FakeEngine
from tests.conftest import audio_file
from tests.fake_server import FileHandler, GatedEngine, InProcessServer, in_process_server

pytestmark = pytest.mark.anyio

TIMIT = "timit_LDC93S1.wav"  # 2.92 s
JFK = "jfk_inaugural_whispercpp.mp3"  # 11 s


def clip(name: str = TIMIT) -> dict[str, tuple[str, bytes]]:
    return {"audio": (name, audio_file(name).read_bytes())}


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == status, body
    assert isinstance(body["message"], str) and body["message"]
    for w in words:
        assert w.lower() in body["message"].lower(), body["message"]
    return body


@pytest.fixture
async def api(tmp_path: Path):
    async with in_process_server(tmp_path, balance=1.0) as srv:
        yield srv


# -- 200 ----------------------------------------------------------------------------------


async def test_sync_answer_shape_metadata_and_charge(api: InProcessServer):
    before = await api.balance()
    r = await api.post("/transcribe", files=clip(), data={"model": "Whisper-Large-V3", "language": "en"})
    assert r.status_code == 200, r.text
    body = TranscribeResponse.model_validate(r.json())
    meta = body.metadata
    assert body.transcription.split()  # the fake engine says one word per 0.4 s
    assert meta.model == "Whisper-Large-V3" and meta.currency == "USD" and meta.language == "en"
    assert meta.actualDuration == meta.chargedDuration == pytest.approx(2.92 / 60, abs=0.001)
    assert meta.cost == pytest.approx(0.01 * 2.92 / 60, abs=2e-5)
    assert meta.fileName == TIMIT and meta.fileSize == audio_file(TIMIT).stat().st_size
    assert meta.weights == "fake-engine"
    assert before - await api.balance() == pytest.approx(meta.cost, abs=1e-6)
    assert [c["kind"] for c in await api.charges()] == ["sync"]


async def test_the_fake_engine_is_deterministic_and_follows_the_duration(api: InProcessServer):
    first = (await api.post("/transcribe", files=clip(JFK), data={"model": "Wizper"})).json()
    again = (await api.post("/transcribe", files=clip(JFK), data={"model": "Wizper"})).json()
    other = (await api.post("/transcribe", files=clip(TIMIT), data={"model": "Wizper"})).json()
    assert first["transcription"] == again["transcription"] != other["transcription"]
    assert len(first["transcription"].split()) == int(11.0 // 0.4)


async def test_audio_url_in_json_in_a_multipart_form_and_in_a_urlencoded_form(tmp_path, files_url):
    async with in_process_server(tmp_path, url_allowlist="127.0.0.0/8") as api:
        url = f"{files_url}/{TIMIT}"
        as_json = await api.post("/transcribe", json={"audioUrl": url, "model": "Wizper"})
        as_form = await api.post("/transcribe", data={"audioUrl": url, "model": "Wizper"})
        as_multipart = await api.post("/transcribe", data={"audioUrl": url, "model": "Wizper"},
                                      files={"other": ("x.txt", b"not the audio field")})
    for r in (as_json, as_form, as_multipart):
        assert r.status_code == 200, r.text
        assert r.json()["metadata"]["fileSize"] == audio_file(TIMIT).stat().st_size
    assert as_json.json()["transcription"] == as_form.json()["transcription"] == as_multipart.json()["transcription"]


async def test_check_balance_shape(api: InProcessServer):
    body = (await api.post("/check-balance")).json()
    assert body == {"usd_balance": "1.00000000", "nano_balance": "0.00000000", "nanoDepositAddress": ""}


async def test_every_api_answer_advertises_idempotency_keys(api: InProcessServer):
    answers = [await api.post("/check-balance"), await api.post("/check-balance", key="wrong"),
               await api.post("/transcribe", files=clip()), await api.post("/transcribe/status", json={})]
    assert [r.status_code for r in answers] == [200, 401, 200, 400]
    assert all(r.headers.get("idempotency-keys") == "supported" for r in answers)


# -- idempotency --------------------------------------------------------------------------


async def test_idempotency_key_replays_without_charging_twice(api: InProcessServer):
    headers = {"idempotency-key": "idem-1"}
    first = await api.post("/transcribe", headers=headers, files=clip(), data={"model": "Wizper"})
    balance = await api.balance()
    again = await api.post("/transcribe", headers=headers, files=clip(), data={"model": "Wizper"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true" and "idempotent-replayed" not in first.headers
    assert await api.balance() == balance
    assert len(await api.charges()) == 1


@pytest.mark.parametrize("change", [
    {"files": clip(JFK), "data": {"model": "Wizper"}},                      # another file
    {"files": clip(), "data": {"model": "Whisper-Large-V3"}},               # another model
    {"files": clip(), "data": {"model": "Wizper", "language": "de"}},       # another option
])
async def test_same_idempotency_key_with_other_content_or_options_is_422(api: InProcessServer, change):
    headers = {"idempotency-key": "idem-conflict"}
    first = await api.post("/transcribe", headers=headers, files=clip(), data={"model": "Wizper"})
    assert first.status_code == 200
    balance = await api.balance()
    other = await api.post("/transcribe", headers=headers, **change)
    assert_error(other, 422, "idempotency-key", "different")
    assert await api.balance() == balance
    # The file name is not part of the request's identity: same bytes, same options replay.
    renamed = await api.post("/transcribe", headers=headers, files={"audio": ("other-name.wav", clip()["audio"][1])},
                             data={"model": "Wizper"})
    assert renamed.status_code == 200 and renamed.headers.get("idempotent-replayed") == "true"


async def test_a_failed_request_does_not_use_up_its_idempotency_key(tmp_path):
    async with in_process_server(tmp_path, balance=0.0001) as api:  # TIMIT costs 0.00049 USD
        headers = {"idempotency-key": "idem-402"}
        assert_error(await api.post("/transcribe", headers=headers, files=clip(), data={"model": "Wizper"}), 402)
        api.app.state.server.store.ensure_key("rich", 1.0)
    # Same key name, another caller: keys are per API key, nothing to replay there either.
        rich = await api.post("/transcribe", key="rich", headers=headers, files=clip(), data={"model": "Wizper"})
        assert rich.status_code == 200 and "idempotent-replayed" not in rich.headers


# -- 400 ----------------------------------------------------------------------------------


async def test_undecodable_audio_is_400_that_says_so(api: InProcessServer):
    r = await api.post("/transcribe", files={"audio": ("broken.mp3", b"this is not audio at all" * 200, "audio/mpeg")})
    assert_error(r, 400, "decode")
    assert "/tmp" not in r.json()["message"]  # no server paths leak
    assert await api.charges() == []


async def test_truncated_audio_is_a_short_answer_or_a_400_never_a_500(api: InProcessServer):
    data = audio_file("jfk_inaugural.flac").read_bytes()[:2000]
    r = await api.post("/transcribe", files={"audio": ("cut.flac", data)}, data={"model": "Wizper"})
    if r.status_code == 200:
        assert r.json()["metadata"]["actualDuration"] < 11 / 60  # only what was there was charged
    else:
        assert_error(r, 400, "decode")


@pytest.mark.parametrize("data,files,words", [
    ({"model": "Wizper"}, None, ["missing audio"]),
    ({"model": "No-Such-Model"}, {"audio": ("a.wav", b"RIFF")}, ["unknown model"]),
    ({"model": "gpt-4o-mini-transcribe"}, {"audio": ("a.wav", b"RIFF")}, ["not available"]),
    ({"language": "xx"}, {"audio": ("a.wav", b"RIFF")}, ["language"]),
    ({"actualDuration": "soon"}, {"audio": ("a.wav", b"RIFF")}, ["actualDuration"]),
    ({"diarize": "maybe"}, {"audio": ("a.wav", b"RIFF")}, ["diarize"]),
    ({"model": "Elevenlabs-STT", "numSpeakers": "2.7"}, {"audio": ("a.wav", b"RIFF")}, ["numSpeakers", "whole"]),
    ({"model": "Elevenlabs-STT", "numSpeakers": "40"}, {"audio": ("a.wav", b"RIFF")}, ["numSpeakers", "32"]),
])
async def test_invalid_fields_are_400(api: InProcessServer, data, files, words):
    assert_error(await api.post("/transcribe", data=data, files=files), 400, *words)


async def test_json_fields_are_checked_as_strictly(api: InProcessServer, files_url):
    url = f"{files_url}/{TIMIT}"
    for body, words in [({"audioUrl": url, "model": "Elevenlabs-STT", "numSpeakers": 2.7}, ["numSpeakers"]),
                        ({"audioUrl": url, "model": "Elevenlabs-STT", "numSpeakers": True}, ["numSpeakers"]),
                        ({"audioUrl": url, "diarize": "maybe"}, ["diarize"]),
                        ({"audioUrl": url, "language": 7}, ["language"])]:
        assert_error(await api.post("/transcribe", json=body), 400, *words)


async def test_a_long_bad_value_is_not_echoed_back(api: InProcessServer):
    for field in ("language", "model", "actualDuration", "diarize"):
        r = await api.post("/transcribe", files=clip(), data={field: "x" * 100_000})
        body = assert_error(r, 400, field)
        assert len(body["message"]) < 500, (field, len(body["message"]))


async def test_json_without_audio_url_or_not_json_is_400(api: InProcessServer):
    assert_error(await api.post("/transcribe", json={"model": "Wizper"}), 400, "audioUrl")
    assert_error(await api.post("/transcribe", json={"audioUrl": "ftp://example.invalid/a.mp3"}), 400, "http")
    r = await api.post("/transcribe", headers={"content-type": "application/json"}, content=b"{not json")
    assert_error(r, 400, "JSON")
    r = await api.post("/transcribe", headers={"content-type": "text/plain"}, content=b"hello")
    assert_error(r, 400, "content type")


# -- 401 / 402 ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "wrong-key"])
async def test_missing_or_wrong_key_is_401_everywhere(api: InProcessServer, key):
    for path in ("/transcribe", "/check-balance", "/transcribe/status"):
        assert_error(await api.post(path, key=key), 401, "key")
    assert_error(await api.http.get("/api/usage", headers={"x-api-key": key}), 401)


async def test_bearer_auth_is_accepted(api: InProcessServer):
    r = await api.http.post("/api/check-balance", headers={"authorization": f"Bearer {api.api_key}"})
    assert r.status_code == 200 and r.json()["usd_balance"] == "1.00000000"


async def test_error_bodies_do_not_echo_the_key(api: InProcessServer):
    r = await api.post("/transcribe", key="secret-wrong-key-123")
    assert_error(r, 401)
    assert "secret-wrong-key-123" not in r.text


async def test_insufficient_balance_is_402_and_not_run(tmp_path):
    async with in_process_server(tmp_path, balance=0.0005) as poor:  # JFK (11 s) costs 0.0018 USD
        assert_error(await poor.post("/transcribe", files=clip(JFK), data={"model": "Wizper"}), 402, "balance")
        assert (await poor.post("/check-balance")).json()["usd_balance"] == "0.00050000"
        assert await poor.charges() == []
        ok = await poor.post("/transcribe", files=clip(TIMIT), data={"model": "Wizper"})  # 0.00049 USD: just fits
        assert ok.status_code == 200, ok.text
        assert await poor.balance() == pytest.approx(0.0005 - ok.json()["metadata"]["cost"], abs=1e-9)


# -- 413 ----------------------------------------------------------------------------------


async def test_upload_over_3_mb_is_413(api: InProcessServer):
    assert_error(await api.post("/transcribe", files={"audio": ("big.wav", b"\0" * (MAX_UPLOAD_BYTES + 1))}),
                 413, "audioUrl")


async def test_upload_over_3_mb_without_content_length_is_413(api: InProcessServer):
    async def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n\r\n"
        for _ in range(64):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    r = await api.post("/transcribe", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(r, 413, "audioUrl")


@pytest.mark.parametrize("path", ["/transcribe", "/transcribe/status"])
async def test_json_bodies_are_capped(api: InProcessServer, path):
    huge = b'{"runId": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = await api.post(path, headers={"content-type": "application/json"}, content=huge)
    assert_error(r, 413, "too large")


async def test_audio_url_over_the_cap_is_413_and_the_download_stops(tmp_path, files_url):
    async with in_process_server(tmp_path, max_url_bytes=1024 * 1024, url_allowlist="127.0.0.1") as api:
        assert_error(await api.post("/transcribe", json={"audioUrl": f"{files_url}/huge"}), 413)  # Content-Length
        FileHandler.chunks_sent = 0
        assert_error(await api.post("/transcribe", json={"audioUrl": f"{files_url}/endless"}), 413)  # counted
    assert FileHandler.chunks_sent < 200  # it stopped reading near the cap, not after 128 MB


# -- 503 ----------------------------------------------------------------------------------


async def test_past_the_queue_bound_requests_get_503_with_retry_after(tmp_path):
    engine = GatedEngine()
    async with in_process_server(tmp_path, engine=engine, workers=1, max_queue=2, retry_after_s=7) as api:
        tasks = [asyncio.create_task(api.post("/transcribe", files=clip(), data={"model": "Wizper"}))
                 for _ in range(8)]
        # Nothing can finish while the engine is held: the first 5 answers are the refusals.
        for _ in range(600):
            if sum(t.done() for t in tasks) >= 5:
                break
            await asyncio.sleep(0.1)
        refused = [t.result() for t in tasks if t.done()]
        engine.gate.set()
        answers = [await t for t in tasks]
    assert len(refused) == 5
    for r in refused:
        assert_error(r, 503, "busy")
        assert r.headers["retry-after"] == "7"
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 3 + [503] * 5, codes  # 1 running + 2 queued


# -- 500 ----------------------------------------------------------------------------------


class BrokenEngine(FakeEngine):
    def transcribe(self, *args: object, **kwargs: object) -> Transcript:
        raise RuntimeError("simulated inference crash")


async def test_internal_error_is_500_with_the_error_body_and_charges_nothing(tmp_path):
    async with in_process_server(tmp_path, engine=BrokenEngine()) as api:
        r = await api.post("/transcribe", files=clip(), headers={"idempotency-key": "crash"})
        assert r.status_code == 500 and r.json() == {"error": 500, "message": "internal error: RuntimeError"}
        assert await api.charges() == [] and await api.balance() == 1.0
