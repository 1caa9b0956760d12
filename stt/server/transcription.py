"""The life of a transcription request once it is read: price, run or queue, charge.

Both kinds start alike: the duration is read from the container's header (no decode) and
priced, so a request the balance cannot pay for gets its 402 at almost no cost, whatever
the file's size. Synchronous models then wait for a worker slot, transcribe, and charge
and record the answer in one transaction (the charge is for the duration actually
decoded). Asynchronous models are charged and persisted as a job at once and answered
202; the job runner does the rest.
"""

from __future__ import annotations

from typing import cast

import anyio
from fastapi.responses import JSONResponse

from stt.contract import SYNC_MODELS, WIZPER, AsyncJob, JobStatus, TranscribeResponse
from stt.server.admission import Ticket
from stt.server.audio import AudioDecodeError, probe_duration
from stt.server.billing import Bill, payment_required, require_balance
from stt.server.engine import Engine, Transcript
from stt.server.errors import APIError
from stt.server.idempotency import REPLAYED
from stt.server.request import AudioRequest
from stt.server.state import ServerState
from stt.server.store import MICRO, IdempotentRecord, InsufficientBalance, Job, KeyAlreadyUsed
from stt.server.tempfiles import keep_for_job

#: (Idempotency-Key, request hash) when the client sent a key.
Idempotency = tuple[str, str] | None


async def run(state: ServerState, key_hash: str, req: AudioRequest, ticket: Ticket,
              idempotency: Idempotency) -> JSONResponse:
    if req.params.model in SYNC_MODELS:
        return JSONResponse(await transcribe_sync(state, key_hash, req, idempotency))
    return JSONResponse(await submit_job(state, key_hash, req, ticket, idempotency), status_code=202)


def replay(state: ServerState, record: IdempotentRecord) -> JSONResponse | None:
    """The recorded answer again (None when its job is gone: then the request runs anew)."""
    if record.response is not None:
        return JSONResponse(record.response, headers=REPLAYED)
    job = state.store.get_job(record.run_id) if record.run_id else None
    return JSONResponse(accepted_body(job), status_code=202, headers=REPLAYED) if job else None


async def transcribe_sync(state: ServerState, key_hash: str, req: AudioRequest,
                          idempotency: Idempotency) -> dict[str, object]:
    p = req.params
    await _quote(state, key_hash, req)
    engine = state.engine
    async with state.admission.slots:
        result = await anyio.to_thread.run_sync(
            lambda: transcribe_file(engine, req.audio.path, accurate=p.model != WIZPER, language=p.language))
    bill = state.pricing.bill(p.model, result.duration_s, p.file_name, req.audio.size)
    body = TranscribeResponse.model_validate(
        {"transcription": result.text, "metadata": bill.metadata(result.language, engine.weights_name)}
    ).model_dump(exclude_none=True)
    try:  # off the event loop: the transaction ends in an fsync
        await anyio.to_thread.run_sync(lambda: state.store.charge_sync(
            key_hash, amount_micro=bill.cost_micro, model=p.model, file_name=p.file_name, file_size=bill.file_size,
            duration_s=bill.duration_s, response=body, idempotency=idempotency))
    except InsufficientBalance as exc:  # another request spent the balance meanwhile
        raise payment_required(exc) from None
    except KeyAlreadyUsed:
        raise _key_in_use() from None
    return body


async def submit_job(state: ServerState, key_hash: str, req: AudioRequest, ticket: Ticket,
                     idempotency: Idempotency) -> dict[str, object]:
    """Charge and persist the job, answer 202 at once; the job keeps the request's ticket."""
    p = req.params
    bill = await _quote(state, key_hash, req)
    kept = keep_for_job(req.audio, state.jobs_dir)
    job_params = {"language": p.language, "diarize": p.diarize, "tag_audio_events": p.tag_audio_events,
                  "num_speakers": p.num_speakers}
    try:
        run_id = state.store.create_job(key_hash, model=p.model, params=job_params, audio_path=str(kept),
                                        file_name=p.file_name, file_size=bill.file_size, duration_s=bill.duration_s,
                                        cost_micro=bill.cost_micro, idempotency=idempotency)
    except InsufficientBalance as exc:
        kept.unlink(missing_ok=True)
        raise payment_required(exc) from None
    except KeyAlreadyUsed:
        kept.unlink(missing_ok=True)
        raise _key_in_use() from None
    state.runner.submit(run_id, ticket)
    job = state.store.get_job(run_id)
    assert job is not None
    return accepted_body(job)


def accepted_body(job: Job) -> dict[str, object]:
    """The 202 answer for a job (also what a replayed submission answers)."""
    return AsyncJob(
        runId=job.run_id, status=cast(JobStatus, job.status), model=job.model, cost=job.cost_micro / MICRO,
        paymentSource="USD", isApiRequest=True, fileName=job.file_name, fileSize=job.file_size,
        chargedDuration=round((job.duration_s or 0) / 60.0, 6), diarize=bool(job.params.get("diarize")),
    ).model_dump(exclude_none=True)


def transcribe_file(engine: Engine, path: str, *, accurate: bool, language: str | None,
                    word_timestamps: bool = False) -> Transcript:
    """Transcribe (blocking; the engine streams the file); undecodable audio is a 400."""
    try:
        return engine.transcribe(path, accurate=accurate, language=language, word_timestamps=word_timestamps)
    except AudioDecodeError as exc:
        raise APIError(400, str(exc)) from None


async def _quote(state: ServerState, key_hash: str, req: AudioRequest) -> Bill:
    """The price from the header's duration; 400 for non-audio, 402 past the balance."""
    try:
        duration_s = await anyio.to_thread.run_sync(probe_duration, req.audio.path)
    except AudioDecodeError as exc:
        raise APIError(400, str(exc)) from None
    bill = state.pricing.bill(req.params.model, duration_s, req.params.file_name, req.audio.size)
    require_balance(bill, state.store.balance_micro(key_hash))
    return bill


def _key_in_use() -> APIError:
    return APIError(409, "another request with this Idempotency-Key is in progress; retry later")
