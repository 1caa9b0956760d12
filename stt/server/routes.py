"""The server's HTTP endpoints; everything they use comes from `app.state.server`."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from stt.contract import BalanceResponse, StatusRequest
from stt.server.errors import APIError
from stt.server.idempotency import replayable, request_hash
from stt.server.request import read_json_body, read_transcribe_request
from stt.server.state import ServerState, server_state
from stt.server.store import MICRO, hash_key
from stt.server.transcription import replay, run

router = APIRouter()
State = Annotated[ServerState, Depends(server_state)]
MAX_IDEMPOTENCY_KEY = 255


def authenticate(request: Request, state: State) -> str:
    """The caller's key hash; 401 without a known key."""
    key = request.headers.get("x-api-key")
    if not key:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
    if not key:
        raise APIError(401, "missing API key: send it in the x-api-key header")
    key_hash = hash_key(key)
    if not state.store.key_exists(key_hash):
        raise APIError(401, "invalid API key")
    return key_hash


Caller = Annotated[str, Depends(authenticate)]


@router.get("/health", response_model=None)
async def health(state: State) -> dict[str, object]:
    return {"status": "ok", "weights": state.engine.weights_name, "workers": state.settings.workers}


@router.post("/api/check-balance", response_model=None)
async def check_balance(key_hash: Caller, state: State) -> dict[str, object]:
    balance = state.store.balance_micro(key_hash)
    return BalanceResponse(usd_balance=_usd(balance), nano_balance="0.00000000", nanoDepositAddress="").model_dump()


@router.get("/api/usage", response_model=None)
async def usage(key_hash: Caller, state: State) -> dict[str, object]:
    """The server's ledger for the calling key: every charge and refund, oldest first.
    Not part of the public API; the pipeline's tests use it to prove nothing was paid twice."""
    rows = state.store.charges(key_hash)
    for r in rows:
        r["amount_usd"] = r.pop("amount_micro") / MICRO
    return {"charges": rows, "usd_balance": _usd(state.store.balance_micro(key_hash))}


@router.post("/api/transcribe")
async def transcribe(request: Request, key_hash: Caller, state: State) -> JSONResponse:
    idem = _idempotency_key(request)
    with state.admission.admitted() as ticket:
        req = await read_transcribe_request(request, state.downloader, ticket, state.settings.max_upload_bytes)
        try:
            if idem is None:
                return await run(state, key_hash, req, ticket, None)
            async with state.key_locks.hold(key_hash, idem):
                fingerprint = await anyio.to_thread.run_sync(request_hash, req)
                record = replayable(state.store.idempotent_record(key_hash, idem), fingerprint)
                answer = replay(state, record) if record else None
                return answer or await run(state, key_hash, req, ticket, (idem, fingerprint))
        finally:
            req.audio.discard()


@router.post("/api/transcribe/status", response_model=None)
async def transcribe_status(key_hash: Caller, state: State, request: Request) -> dict[str, object]:
    body = await read_json_body(request)
    try:
        req = StatusRequest.model_validate(body)
    except ValidationError:
        raise APIError(400, "missing runId: send the JSON fields of the 202 answer, runId at least") from None
    job = state.store.get_job(req.runId)
    if job is None or job.key_hash != key_hash:  # another key's job is none of this caller's business
        raise APIError(404, f"transcription job {req.runId[:64]} not found")
    if job.status == "completed":
        return job.result or {}
    if job.status == "failed":
        return {"status": "failed", "error": job.error or "failed"}
    return {"status": job.status}


def _idempotency_key(request: Request) -> str | None:
    if not request.app.state.server.settings.idempotency:
        return None
    idem = request.headers.get("idempotency-key") or None
    if idem is not None and len(idem) > MAX_IDEMPOTENCY_KEY:
        raise APIError(400, f"Idempotency-Key is too long (max {MAX_IDEMPOTENCY_KEY} characters)")
    return idem


def _usd(micro: int) -> str:
    return f"{micro / MICRO:.8f}"
