"""httpx client of the NanoGPT transcription API.

It does one request per call and turns every failure into a typed `stt.errors` exception;
it never retries on its own. Retrying is a policy of the pipeline (how many attempts, how
long, whether a sent request may have been paid for), so it lives in `tasks/`.

Async because the pipeline keeps dozens of requests in flight per Prefect task.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from stt import errors
from stt.contract import (
    AsyncJob,
    BalanceResponse,
    StatusResponse,
    TranscribeResponse,
    WHISPER_LARGE_V3,
)

#: Synchronous transcription of a long file can take many minutes on the server side;
#: connecting or sending should not.
DEFAULT_TIMEOUT = httpx.Timeout(connect=15.0, read=1800.0, write=300.0, pool=None)


@dataclass(frozen=True)
class PollPolicy:
    """How to poll an asynchronous job: start short, grow, cap, give up at a deadline.

    The hosted docs poll every 5 s; short jobs finish in a second or two, long ones take
    minutes, so a geometric schedule answers both without hammering the API. Its growth
    bounds how late a finished job is noticed: with 1.25 a wait is about a quarter of the
    time already waited (at most half, with the +-20 % jitter, or 2.5 s early on). With 1.6
    it was about 0.6 of it (a job done just after the poll at 21.6 s was seen at 35 s), and
    the chunks of one file are sent one after another, so a chunked file paid that per chunk.
    """

    first_delay_s: float = 0.5
    factor: float = 1.25
    max_delay_s: float = 15.0
    deadline_s: float = 3600.0

    def delays(self):
        delay = self.first_delay_s
        while True:
            yield delay * random.uniform(0.8, 1.2)
            delay = min(delay * self.factor, self.max_delay_s)


class RateLimiter:
    """Requests per second across every client of a run (the hosted API allows 25/s).

    A reservation schedule under a thread lock, because a run's batches live in several
    worker threads, each with its own event loop: each caller is given the next free
    slot and sleeps until then without holding the lock.
    """

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    async def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@functools.lru_cache(maxsize=1)
def _ssl_context():
    """One per process: httpx would otherwise build one (and load the CA bundle, ~50 ms
    of CPU) for every client, i.e. every batch, even for plain-http loopback."""
    return httpx.create_ssl_context()


class STTClient:
    """Client of one API endpoint (`base_url` ends in `/api`, e.g. https://nano-gpt.com/api)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None, max_connections: int = 100,
                 rate_limiter: RateLimiter | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._limiter = rate_limiter
        #: The API said (header `Idempotency-Keys: supported`) that it answers a repeated
        #: Idempotency-Key from its record, without charging again. Known after any request.
        self.idempotency_supported = False
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers={"x-api-key": api_key, "user-agent": "bulkscribe/0.1"},
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            # Loopback and private endpoints must not go through a corporate proxy.
            trust_env=not _is_loopback(self.base_url),
            verify=_ssl_context(),
        )

    async def __aenter__(self) -> STTClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- endpoints ----------------------------------------------------------------------

    async def transcribe_bytes(self, data: bytes, filename: str, *, model: str = WHISPER_LARGE_V3,
                               language: str = "auto", actual_duration_min: float | None = None,
                               diarize: bool = False, tag_audio_events: bool = False,
                               content_type: str = "application/octet-stream",
                               idempotency_key: str | None = None) -> TranscribeResponse | AsyncJob:
        """Direct upload (multipart `audio`, <= 3 MB on the hosted API)."""
        form = {"model": model, "language": language}
        if actual_duration_min is not None:
            form["actualDuration"] = f"{actual_duration_min:.6f}"
        if diarize:
            form["diarize"] = "true"
        if tag_audio_events:
            form["tagAudioEvents"] = "true"
        body, multipart_type = _multipart(form, {"audio": (filename, data, content_type)})
        return await self._submit(content=body, content_type=multipart_type, idempotency_key=idempotency_key)

    async def transcribe_url(self, audio_url: str, *, model: str = WHISPER_LARGE_V3, language: str = "auto",
                             actual_duration_min: float | None = None, diarize: bool = False,
                             tag_audio_events: bool = False,
                             idempotency_key: str | None = None) -> TranscribeResponse | AsyncJob:
        """URL mode (JSON `audioUrl`, <= 500 MB). The URL may carry a signature: never log it."""
        body: dict[str, Any] = {"audioUrl": audio_url, "model": model, "language": language}
        if actual_duration_min is not None:
            body["actualDuration"] = f"{actual_duration_min:.6f}"
        if diarize:
            body["diarize"] = True
        if tag_audio_events:
            body["tagAudioEvents"] = True
        return await self._submit(json=body, idempotency_key=idempotency_key)

    async def status(self, job: AsyncJob) -> StatusResponse:
        payload = await self._post("transcribe/status", json=job.status_request())
        return _parse(StatusResponse, payload)

    async def wait(self, job: AsyncJob, policy: PollPolicy = PollPolicy()) -> StatusResponse:
        """Poll until the job completes; a failed job raises `JobFailed` with the server's reason.

        Transient errors while polling are absorbed (the job keeps running server-side);
        the deadline bounds the whole wait.
        """
        started = time.monotonic()
        for delay in policy.delays():
            try:
                result = await self.status(job)
            except errors.TransientError as exc:
                result = None
                delay = max(delay, exc.retry_after or 0.0)
            if result is not None:
                if result.status == "completed":
                    return result
                if result.status == "failed":
                    raise errors.JobFailed(result.error or "job failed without a reason", code="job_failed")
            if time.monotonic() - started + delay > policy.deadline_s:
                raise errors.TimeoutError_(
                    f"job {job.runId} not finished after {policy.deadline_s:.0f} s", code="poll_deadline"
                )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def balance(self) -> BalanceResponse:
        payload = await self._post("check-balance")
        return _parse(BalanceResponse, payload)

    # -- plumbing -----------------------------------------------------------------------

    async def _submit(self, idempotency_key: str | None = None, content_type: str | None = None,
                      **kwargs: Any) -> TranscribeResponse | AsyncJob:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        if content_type:
            headers["content-type"] = content_type
        response = await self._send("transcribe", headers=headers, **kwargs)
        payload = _json_object(response)
        answer: TranscribeResponse | AsyncJob
        if response.status_code == 202 or ("runId" in payload and "transcription" not in payload):
            answer = _parse(AsyncJob, payload)
        else:
            answer = _parse(TranscribeResponse, payload)
        if response.headers.get("idempotent-replayed", "").lower() == "true":
            answer.mark_replayed()
        return answer

    async def _post(self, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
        return _json_object(await self._send(path, headers=headers, **kwargs))

    async def _send(self, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """One POST; every failure as a typed error saying whether the request may have been acted on."""
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            response = await self._http.post(path, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was sent
            raise errors.ConnectError(f"{type(exc).__name__}: {exc} ({self.base_url})") from exc
        except httpx.TimeoutException as exc:  # sent (at least partly), no answer
            raise errors.TimeoutError_(f"{type(exc).__name__} talking to {self.base_url}", maybe_sent=True) from exc
        except httpx.TransportError as exc:  # connection lost mid-request
            raise errors.ConnectionLost(f"connection lost: {type(exc).__name__} ({self.base_url})",
                                        maybe_sent=True) from exc
        if response.headers.get("idempotency-keys", "").lower() == "supported":
            self.idempotency_supported = True
        if response.status_code >= 400:
            raise errors.error_from_response(response.status_code, _body(response), response.headers)
        return response


def _multipart(form: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """The multipart body as one buffer, and its content type (encoded by httpx all the
    same). httpx would stream it in a dozen pieces, each a trip through h11, anyio and a
    send(2): a 19 KB clip cost 1.2-1.6 ms of client CPU per request that way against a
    minimal loopback server, 0.7-0.8 ms in one buffer. A direct upload is <= 3 MB."""
    request = httpx.Request("POST", "http://multipart.invalid/", data=form, files=files)
    return request.read(), request.headers["content-type"]


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = _body(response)
    if not isinstance(body, dict):
        raise errors.InvalidResponse(f"expected a JSON object, got {str(body)[:200]!r}",
                                     status_code=response.status_code)
    return body


def _parse(model, payload: dict):
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise errors.InvalidResponse(f"response does not match {model.__name__}: {exc.errors()[:3]}") from exc


def _is_loopback(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")
