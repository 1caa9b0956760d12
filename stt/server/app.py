"""The embedded NanoGPT-compatible transcription server (FastAPI).

`create_app()` builds an app from explicit settings, store and engine, so tests can run
several differently configured servers side by side; `serve()` runs one under uvicorn.
It imports the shared contract (`stt.contract`) and nothing of the pipeline.

Request life: authenticate -> parse (multipart upload capped at 3 MB while it streams in,
or JSON `audioUrl` streamed to a temp file and capped at 500 MB) -> admission (a bounded
queue; 503 + Retry-After past it) -> decode in a worker thread -> price check (402) ->
transcribe in a worker thread -> charge and record the answer in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from stt.contract import (
    ASYNC_MODELS,
    SPEC_MODELS,
    SYNC_MODELS,
    WIZPER,
    AsyncJob,
    BalanceResponse,
    Metadata,
    TranscribeJsonRequest,
    StatusRequest,
    TranscribeResponse,
    normalize_language,
)
from stt.server.audio import AudioDecodeError, decode
from stt.server.engine import Engine
from stt.server.jobs import JobRunner
from stt.server.settings import ServerSettings
from stt.server.whisper_engine import WhisperEngine
from stt.server.store import MICRO, InsufficientBalance, Store, hash_key

log = logging.getLogger("bulkscribe.server")

_JSON_BODY_LIMIT = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around the file


class APIError(Exception):
    """Answered as the spec's error body `{error: <status>, message}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": status, "message": message}, status_code=status, headers=headers)


@dataclass
class TranscribeParams:
    model: str
    language: str | None  # Whisper code, None = detect
    diarize: bool
    tag_audio_events: bool
    actual_duration_min: float | None
    file_name: str | None
    num_speakers: int | None = None


class Admission:
    """At most `workers` decodes/transcriptions at once and `max_queue` waiting behind them.

    A full queue answers at once (503 + Retry-After) instead of letting requests pile up
    until clients time out: under load every request gets an answer.
    """

    def __init__(self, workers: int, max_queue: int) -> None:
        self.slots = asyncio.Semaphore(workers)  # shared with the asynchronous job workers
        self._capacity = workers + max_queue
        self._inside = 0

    @asynccontextmanager
    async def enter(self, retry_after_s: int) -> AsyncIterator[None]:
        if self._inside >= self._capacity:
            raise APIError(503, "server busy: the transcription queue is full, retry later",
                           {"Retry-After": str(retry_after_s)})
        self._inside += 1
        try:
            async with self.slots:
                yield
        finally:
            self._inside -= 1


def create_app(settings: ServerSettings | None = None, *, store: Store | None = None,
               engine: Engine | None = None, api_keys: dict[str, float] | None = None) -> FastAPI:
    """Build the server. `api_keys` maps keys to the balance (USD) they start with."""
    settings = settings or ServerSettings()
    store = store or Store(settings.db_path)
    engine = engine or WhisperEngine(settings)
    for key, balance in (api_keys or {}).items():
        store.ensure_key(key, balance)
    admission = Admission(settings.workers, settings.max_queue)
    jobs_dir = settings.jobs_dir or Path(settings.db_path).with_name(Path(settings.db_path).stem + "-jobs")
    runner: JobRunner | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal runner
        # Load the weights before accepting traffic: the first request should not pay
        # for it, and a bad model dir should stop the server, not fail every request.
        await anyio.to_thread.run_sync(engine.load)
        # faster-whisper's decode_audio runs gc.collect() on every call; freezing what exists
        # after start-up (the model, FastAPI, pydantic) keeps each collection ~50 ms shorter.
        gc.freeze()
        jobs_dir.mkdir(parents=True, exist_ok=True)
        runner = JobRunner(store, engine, admission.slots, lambda: engine.weights_name,
                           retention=timedelta(hours=settings.job_retention_hours))
        await runner.start(settings.workers)
        log.info("ready: weights %s, %d worker(s), queue %d", engine.weights_name, settings.workers,
                 settings.max_queue)
        yield
        await runner.stop()

    app = FastAPI(title="bulkscribe embedded transcription server", lifespan=lifespan)
    app.state.settings, app.state.store, app.state.engine = settings, store, engine

    # -- errors in the spec's shape -----------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return _error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return _error_response(400, f"invalid request: {exc.errors()[:3]}")

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception):
        log.exception("internal error")
        return _error_response(500, f"internal error: {type(exc).__name__}")

    # -- helpers ------------------------------------------------------------------------

    def authenticate(request: Request) -> str:
        key = request.headers.get("x-api-key")
        if not key:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                key = auth[7:].strip()
        if not key:
            raise APIError(401, "missing API key: send it in the x-api-key header")
        key_hash = hash_key(key)
        if not store.key_exists(key_hash):
            raise APIError(401, "invalid API key")
        return key_hash

    def price_micro(model: str, duration_s: float) -> int:
        per_min = settings.prices_usd_per_min.get(model)
        if per_min is None:
            raise APIError(400, f"no price configured for model {model}")
        return math.ceil(per_min * duration_s / 60.0 * MICRO)

    def parse_params(fields: dict[str, Any], file_name: str | None) -> TranscribeParams:
        model = str(fields.get("model") or "Whisper-Large-V3")
        if model not in SPEC_MODELS:
            raise APIError(400, f"unknown model {model!r}; models: {', '.join(SPEC_MODELS)}")
        if model not in SYNC_MODELS and model not in ASYNC_MODELS:
            raise APIError(400, f"model {model} is not available on this server; "
                                f"use one of {', '.join(SYNC_MODELS + ASYNC_MODELS)}")
        try:
            language = normalize_language(None if fields.get("language") is None else str(fields["language"]))
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        actual = fields.get("actualDuration")
        try:
            actual_min = float(actual) if actual not in (None, "") else None
        except (TypeError, ValueError):
            raise APIError(400, f"actualDuration must be a number of minutes, got {actual!r}") from None
        hint = fields.get("numSpeakers", fields.get("num_speakers"))
        try:
            num_speakers = int(hint) if hint not in (None, "") else None
        except (TypeError, ValueError):
            raise APIError(400, f"numSpeakers must be a whole number, got {hint!r}") from None
        if num_speakers is not None and not 1 <= num_speakers <= 32:
            raise APIError(400, "numSpeakers must be between 1 and 32")
        return TranscribeParams(model, language, _flag(fields.get("diarize"), "diarize"),
                                _flag(fields.get("tagAudioEvents"), "tagAudioEvents"), actual_min, file_name,
                                num_speakers)

    async def read_request(request: Request) -> tuple[TranscribeParams, str, int]:
        """Parse either request form into params and a temp file holding the audio."""
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            limit = settings.max_upload_bytes + _MULTIPART_OVERHEAD
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise APIError(413, f"file too large for direct upload (max {settings.max_upload_bytes} bytes); "
                                    "send an audioUrl instead (up to 500 MB)")
            parser = MultiPartParser(request.headers, _capped(request.stream(), limit, settings.max_upload_bytes),
                                     max_files=2, max_fields=50)
            try:
                form = await parser.parse()
            except APIError:
                raise
            except Exception as exc:  # malformed multipart
                raise APIError(400, f"malformed multipart body: {exc}") from None
            fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
            upload = form.get("audio")
            if isinstance(upload, UploadFile):
                try:
                    data = await upload.read()
                finally:
                    await upload.close()
                if len(data) > settings.max_upload_bytes:
                    raise APIError(413, f"file too large for direct upload ({len(data)} bytes, max "
                                        f"{settings.max_upload_bytes}); send an audioUrl instead (up to 500 MB)")
                if not data:
                    raise APIError(400, "the audio file is empty")
                params = parse_params(fields, upload.filename)
                return params, _to_tempfile(data), len(data)
            if fields.get("audioUrl"):
                params = parse_params(fields, None)
                path, size = await download(str(fields["audioUrl"]))
                return params, path, size
            raise APIError(400, "missing audio: send a file in the 'audio' field or an 'audioUrl'")
        if ctype.startswith("application/x-www-form-urlencoded"):
            # A form with no file (e.g. requests' data= alone): only audioUrl can carry audio.
            form = await request.form(max_files=0, max_fields=50)
            fields = dict(form.items())
            if not fields.get("audioUrl"):
                raise APIError(400, "missing audio: send a file in the 'audio' field or an 'audioUrl'")
            params = parse_params(fields, None)
            path, size = await download(str(fields["audioUrl"]))
            return params, path, size
        if ctype.startswith("application/json"):
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > _JSON_BODY_LIMIT:
                    raise APIError(413, "JSON body too large")
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise APIError(400, "body is not valid JSON") from None
            if not isinstance(body, dict) or not body.get("audioUrl"):
                raise APIError(400, "missing audioUrl: JSON requests must give the URL of the audio")
            try:
                req = TranscribeJsonRequest.model_validate(body)
            except Exception as exc:
                raise APIError(400, f"invalid request: {exc}") from None
            params = parse_params(req.model_dump(), None)
            path, size = await download(req.audioUrl)
            return params, path, size
        raise APIError(400, "unsupported content type: use multipart/form-data (audio) or application/json (audioUrl)")

    async def download(url: str) -> tuple[str, int]:
        """Stream the URL to a temp file, never holding it whole in memory; 413 past the cap."""
        if not url.lower().startswith(("http://", "https://")):
            raise APIError(400, "audioUrl must be an http(s) URL")
        cap = settings.max_url_bytes
        fd, path = tempfile.mkstemp(prefix="bulkscribe-url-", suffix=".audio")
        size = 0
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=settings.url_download_timeout_s),
                                         follow_redirects=True, trust_env=False) as http:
                async with http.stream("GET", url) as resp:
                    if resp.status_code >= 400:
                        raise APIError(400, f"could not download audioUrl: the URL answered HTTP {resp.status_code}")
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > cap:
                        raise APIError(413, f"audio at audioUrl is {int(declared)} bytes, more than the {cap} allowed")
                    with os.fdopen(fd, "wb") as out:
                        fd = -1
                        async for chunk in resp.aiter_bytes(1 << 20):
                            size += len(chunk)
                            if size > cap:
                                raise APIError(413, f"audio at audioUrl exceeds the {cap} bytes allowed")
                            out.write(chunk)
        except httpx.HTTPError as exc:
            _unlink(path)
            raise APIError(400, f"could not download audioUrl: {type(exc).__name__}") from None
        except BaseException:
            _unlink(path)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        if size == 0:
            _unlink(path)
            raise APIError(400, "the audio at audioUrl is empty")
        return path, size

    def metadata(params: TranscribeParams, size: int, duration_s: float, cost_micro: int, language: str) -> Metadata:
        minutes = round(duration_s / 60.0, 6)
        return Metadata(
            fileName=params.file_name, fileSize=size, chargedDuration=minutes, actualDuration=minutes,
            language=language, cost=cost_micro / MICRO, currency="USD", model=params.model,
            weights=engine.weights_name,
        )

    # -- routes -------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok", "weights": engine.weights_name, "workers": settings.workers}

    @app.post("/api/check-balance")
    async def check_balance(request: Request):
        key_hash = authenticate(request)
        balance = store.balance_micro(key_hash)
        return BalanceResponse(usd_balance=f"{balance / MICRO:.8f}", nano_balance="0.00000000",
                               nanoDepositAddress="").model_dump()

    @app.get("/api/usage")
    async def usage(request: Request):
        """The server's ledger for the calling key: every charge and refund, oldest first.
        Not part of the public API; the pipeline's tests use it to prove nothing was paid twice."""
        key_hash = authenticate(request)
        rows = store.charges(key_hash)
        for r in rows:
            r["amount_usd"] = r.pop("amount_micro") / MICRO
        return {"charges": rows, "usd_balance": f"{store.balance_micro(key_hash) / MICRO:.8f}"}

    @app.post("/api/transcribe")
    async def transcribe(request: Request):
        key_hash = authenticate(request)
        idem = request.headers.get("idempotency-key") or None
        previous = store.previous_answer(key_hash, idem)
        if previous and "sync" in previous:
            return JSONResponse(previous["sync"], headers={"Idempotent-Replayed": "true"})
        if previous and previous.get("run_id"):
            job = store.get_job(previous["run_id"])
            if job is not None:
                return JSONResponse(accepted_body(job), status_code=202, headers={"Idempotent-Replayed": "true"})
        params, path, size = await read_request(request)
        try:
            if params.model in SYNC_MODELS:
                return await run_sync(key_hash, params, path, size, idem)
            return await submit_job(key_hash, params, path, size, idem)
        finally:
            _unlink(path)

    async def submit_job(key_hash: str, params: TranscribeParams, path: str, size: int, idem: str | None):
        """Price from the decoded duration, charge and persist the job, answer 202 at once."""
        try:
            audio = await anyio.to_thread.run_sync(decode, path)
        except AudioDecodeError as exc:
            raise APIError(400, str(exc)) from None
        duration_s = len(audio) / 16_000
        del audio
        cost = price_micro(params.model, duration_s)
        kept = jobs_dir / f"{uuid.uuid4().hex}.audio"
        shutil.move(path, kept)  # the temp dir may be on another filesystem
        job_params = {"language": params.language, "diarize": params.diarize,
                      "tag_audio_events": params.tag_audio_events, "num_speakers": params.num_speakers}
        try:
            run_id = store.create_job(key_hash, model=params.model, params=job_params, audio_path=str(kept),
                                      file_name=params.file_name, file_size=size, duration_s=duration_s,
                                      cost_micro=cost, idempotency_key=idem)
        except InsufficientBalance as exc:
            _unlink(str(kept))
            raise APIError(402, str(exc)) from None
        runner.submit(run_id)
        return JSONResponse(accepted_body(store.get_job(run_id)), status_code=202)

    def accepted_body(job) -> dict:
        return AsyncJob(
            runId=job.run_id, status=job.status, model=job.model, cost=job.cost_micro / MICRO, paymentSource="USD",
            isApiRequest=True, fileName=job.file_name, fileSize=job.file_size,
            chargedDuration=round((job.duration_s or 0) / 60.0, 6), diarize=bool(job.params.get("diarize")),
        ).model_dump(exclude_none=True)

    @app.post("/api/transcribe/status")
    async def transcribe_status(request: Request):
        key_hash = authenticate(request)
        try:
            body = await request.json()
            req = StatusRequest.model_validate(body)
        except Exception:
            raise APIError(400, "missing runId: send the JSON fields of the 202 answer, runId at least") from None
        job = store.get_job(req.runId)
        if job is None or job.key_hash != key_hash:  # another key's job is none of this caller's business
            raise APIError(404, f"transcription job {req.runId} not found")
        if job.status == "completed":
            return job.result
        if job.status == "failed":
            return {"status": "failed", "error": job.error or "failed"}
        return {"status": job.status}

    async def run_sync(key_hash: str, params: TranscribeParams, path: str, size: int, idem: str | None):
        async with admission.enter(settings.retry_after_s):
            try:
                audio = await anyio.to_thread.run_sync(decode, path)
            except AudioDecodeError as exc:
                raise APIError(400, str(exc)) from None
            duration_s = len(audio) / 16_000
            cost = price_micro(params.model, duration_s)
            balance = store.balance_micro(key_hash)
            if cost > balance:
                raise APIError(402, str(InsufficientBalance(cost, balance)))
            result = await anyio.to_thread.run_sync(
                lambda: engine.transcribe(audio, accurate=params.model != WIZPER, language=params.language)
            )
        body = TranscribeResponse(
            transcription=result.text, metadata=metadata(params, size, duration_s, cost, result.language)
        ).model_dump(exclude_none=True)
        try:  # off the event loop: the transaction ends in an fsync
            await anyio.to_thread.run_sync(lambda: store.charge_sync(
                key_hash, amount_micro=cost, model=params.model, file_name=params.file_name, file_size=size,
                duration_s=duration_s, response=body, idempotency_key=idem))
        except InsufficientBalance as exc:  # another request spent the balance meanwhile
            raise APIError(402, str(exc)) from None
        return JSONResponse(body)

    return app


async def _capped(stream: AsyncIterator[bytes], limit: int, file_limit: int) -> AsyncIterator[bytes]:
    """Pass the body through, stopping with 413 as soon as it exceeds `limit`."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise APIError(413, f"file too large for direct upload (max {file_limit} bytes); "
                                "send an audioUrl instead (up to 500 MB)")
        yield chunk


def _flag(value: Any, name: str) -> bool:
    """Booleans arrive as "true"/"false" in multipart and as JSON booleans."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise APIError(400, f"{name} must be true or false, got {value!r}")


def _to_tempfile(data: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="bulkscribe-upload-", suffix=".audio")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _unlink(path: str | None) -> None:
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def serve(settings: ServerSettings, api_keys: dict[str, float]) -> None:
    """Run the server in the foreground (used by `bulkscribe serve` and the embedded launcher)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, api_keys=api_keys)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
