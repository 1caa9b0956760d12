"""The life of a transcription request once it is read: price, run or queue, charge.

Synchronous models: admission (a bounded queue) -> decode in a worker thread -> price
check (402) -> transcribe in a worker thread -> charge and record the answer in one
transaction. Asynchronous models: price, charge and persist the job, answer 202 at once;
the job runner does the rest.
"""

from __future__ import annotations

import anyio
import numpy as np

from stt.contract import WIZPER, AsyncJob, TranscribeResponse
from stt.server.audio import AudioDecodeError, decode
from stt.server.billing import payment_required, require_balance
from stt.server.errors import APIError
from stt.server.request import AudioRequest
from stt.server.state import ServerState
from stt.server.store import MICRO, InsufficientBalance, Job
from stt.server.tempfiles import keep_for_job


async def transcribe_sync(state: ServerState, key_hash: str, req: AudioRequest, idem: str | None) -> dict[str, object]:
    p = req.params
    async with state.admission.enter():
        audio = await anyio.to_thread.run_sync(_decode, req.audio.path)
        bill = state.pricing.bill(p.model, len(audio) / 16_000, p.file_name, req.audio.size)
        require_balance(bill, state.store.balance_micro(key_hash))
        engine = state.engine
        result = await anyio.to_thread.run_sync(
            lambda: engine.transcribe(audio, accurate=p.model != WIZPER, language=p.language))
    body = TranscribeResponse.model_validate(
        {"transcription": result.text, "metadata": bill.metadata(result.language, engine.weights_name)}
    ).model_dump(exclude_none=True)
    try:  # off the event loop: the transaction ends in an fsync
        await anyio.to_thread.run_sync(lambda: state.store.charge_sync(
            key_hash, amount_micro=bill.cost_micro, model=p.model, file_name=p.file_name, file_size=bill.file_size,
            duration_s=bill.duration_s, response=body, idempotency_key=idem))
    except InsufficientBalance as exc:  # another request spent the balance meanwhile
        raise payment_required(exc) from None
    return body


async def submit_job(state: ServerState, key_hash: str, req: AudioRequest, idem: str | None) -> dict[str, object]:
    """Price from the decoded duration, charge and persist the job, answer 202 at once."""
    p = req.params
    audio = await anyio.to_thread.run_sync(_decode, req.audio.path)
    bill = state.pricing.bill(p.model, len(audio) / 16_000, p.file_name, req.audio.size)
    del audio
    kept = keep_for_job(req.audio, state.jobs_dir)
    job_params = {"language": p.language, "diarize": p.diarize, "tag_audio_events": p.tag_audio_events,
                  "num_speakers": p.num_speakers}
    try:
        run_id = state.store.create_job(key_hash, model=p.model, params=job_params, audio_path=str(kept),
                                        file_name=p.file_name, file_size=bill.file_size, duration_s=bill.duration_s,
                                        cost_micro=bill.cost_micro, idempotency_key=idem)
    except InsufficientBalance as exc:
        kept.unlink(missing_ok=True)
        raise payment_required(exc) from None
    state.runner.submit(run_id)
    job = state.store.get_job(run_id)
    assert job is not None
    return accepted_body(job)


def accepted_body(job: Job) -> dict[str, object]:
    """The 202 answer for a job (also what a replayed submission answers)."""
    return AsyncJob(
        runId=job.run_id, status=job.status, model=job.model, cost=job.cost_micro / MICRO, paymentSource="USD",
        isApiRequest=True, fileName=job.file_name, fileSize=job.file_size,
        chargedDuration=round((job.duration_s or 0) / 60.0, 6), diarize=bool(job.params.get("diarize")),
    ).model_dump(exclude_none=True)


def _decode(path: str) -> np.ndarray:
    try:
        return decode(path)
    except AudioDecodeError as exc:
        raise APIError(400, str(exc)) from None
