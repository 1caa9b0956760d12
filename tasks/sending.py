"""Sending one file: resume, plan, reserve its cost, send its unit(s) with retries, stitch.

Retries happen here, per file, not as Prefect task retries: a retry of the task would
re-send the whole batch. Only transient errors are retried (exponential backoff, full
jitter, at least the server's Retry-After); a permanent error becomes a failure row.

Money: every request is written to the ledger before it leaves, every asynchronous
runId before polling starts. A request whose answer was lost is re-sent only when the
API de-duplicates by idempotency key; otherwise it is reported, not paid for twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stt import errors
from stt.client import STTClient
from stt.contract import AsyncJob
from tasks import audio_prep
from tasks.batch_config import BatchConfig
from tasks.discovery import AudioFile
from tasks.ledger import Ledger
from tasks.outcome import Outcome, failure, success
from tasks.stitching import Answer, merge_answers
from tasks.upload import Unit, UploadPlan, plan_upload

log = logging.getLogger("bulkscribe.tasks")

_STOP_ERRORS = (errors.PaymentRequired, errors.DailyLimitExceeded, errors.Unauthorized)


class StopSignal:
    """Shared by the files of a batch: once the API says stop, nothing more is sent."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason


class _Ended(Exception):
    """A unit could not be sent or answered: the file ends with this outcome."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


async def transcribe_one(client: STTClient, f: AudioFile, cfg: BatchConfig, ledger: Ledger,
                         stop: StopSignal) -> Outcome:
    """One file, start to end; every way it can end is an Outcome."""
    return await _FileSend(client, f, cfg, ledger, stop).run()


class _FileSend:
    def __init__(self, client: STTClient, f: AudioFile, cfg: BatchConfig, ledger: Ledger, stop: StopSignal):
        self.client, self.f, self.cfg, self.ledger, self.stop = client, f, cfg, ledger, stop
        self.key = cfg.options.request_key(f.fingerprint)
        self.prior = cfg.outstanding.get(self.key) or {}
        #: unit index -> submitted job, from earlier runs and this one
        self.jobs: dict[str, Any] = dict(self.prior.get("jobs") or {})
        self.entry: dict[str, Any] = {}

    def fail(self, exc: errors.STTError, *, attempts: int, kind: str | None = None,
             keep_ledger: bool = False) -> Outcome:
        return failure(self.f, self.cfg.options, self.key, exc, attempts=attempts, run_id=self.cfg.run_id,
                       kind=kind, keep_ledger=keep_ledger)

    async def run(self) -> Outcome:
        if self._lost_earlier():
            return self.fail(errors.PermanentError(
                f"outcome unknown: sent by run {str(self.prior.get('run_id', '?'))[:8]} at "
                f"{self.prior.get('updated_at', '?')} with no answer recorded; not re-sent so as not to pay "
                "twice (re-send with --resend-unknown)", code="outcome_unknown"),
                attempts=0, kind="unknown", keep_ledger=True)
        if self.stop.reason:
            return Outcome(key=self.key, sent=False)
        worst = self.cfg.worst_direct_cost()
        try:
            plan = await asyncio.to_thread(plan_upload, self.f, self.cfg.upload, self.key,
                                           price_per_min=self.cfg.price_per_min, probe=self._should_probe(worst))
        except errors.STTError as exc:
            return self.fail(exc, attempts=0)
        reserved = self._reserve(plan, worst)
        if reserved is None:
            plan.cleanup()
            return Outcome(key=self.key, sent=False)
        outcome = await self._send_plan(plan)
        self._settle(outcome, plan, reserved)
        return outcome

    def _lost_earlier(self) -> bool:
        """A request sent by an earlier run whose answer was never recorded, and no job to poll."""
        may_resend = self.cfg.endpoint.idempotent or self.cfg.resend_unknown
        return self.prior.get("state") == "sent" and not self.jobs and not may_resend

    def _should_probe(self, worst: float) -> bool:
        # Probing a small file's duration costs more CPU than sending it; skip it while the
        # budget could absorb a worst-case file for every request in flight, and reserve that
        # worst case instead (settled to the real charge when the answer comes).
        budget = self.cfg.budget
        return budget is not None and budget.remaining() < worst * max(8, 2 * self.cfg.concurrency)

    def _reserve(self, plan: UploadPlan, worst: float) -> float | None:
        """The amount reserved for this file (0 when nothing is to be reserved), None if refused."""
        if self.cfg.budget is None or self.jobs:
            return 0.0
        amount = plan.estimated_cost if plan.estimated_cost is not None else worst
        refusal = self.cfg.budget.reserve(amount)
        if refusal:
            self.stop.set(refusal)
            return None
        return amount

    def _settle(self, outcome: Outcome, plan: UploadPlan, reserved: float) -> None:
        if not reserved or self.cfg.budget is None:
            return
        if outcome.failure is not None and outcome.failure.error_kind == "unknown":
            return  # may have been paid: keep the reservation
        actual = 0.0  # errors are not charged
        if outcome.transcript is not None:
            cost = outcome.transcript.cost
            actual = cost if cost is not None else (plan.estimated_cost or reserved)
        self.cfg.budget.settle(reserved, actual)

    async def _send_plan(self, plan: UploadPlan) -> Outcome:
        """Send the plan's unit(s) and merge the answers; the ledger entry is written first."""
        self.entry = {"state": "sent", "mode": plan.mode, "jobs": self.jobs, "source": self.f.url,
                      "fingerprint": self.f.fingerprint, "model": self.cfg.options.model, "run_id": self.cfg.run_id}
        try:
            await asyncio.to_thread(self.ledger.write, self.key, self.entry)
            parts: list[tuple[Unit, Answer]] = []
            for unit in plan.units():
                parts.append((unit, await self._send_unit(unit, plan)))
        except _Ended as ended:
            return ended.outcome
        except audio_prep.AudioPrepError as exc:
            return self.fail(errors.BadRequest(str(exc)), attempts=0)
        finally:
            await asyncio.to_thread(plan.cleanup)
        return success(self.f, self.cfg.options, self.key, merge_answers(parts), mode=plan.mode,
                       run_id=self.cfg.run_id)

    async def _send_unit(self, unit: Unit, plan: UploadPlan) -> Answer:
        """Send one unit (the whole file, or one chunk) with retries; resume its job if one is recorded."""
        recorded = self.jobs.get(str(unit.index))
        if recorded:
            answer = await self._resume_job(AsyncJob.model_validate(recorded))
            if answer is not None:
                return answer
        attempt = 0
        while True:
            if self.stop.reason:
                raise _Ended(Outcome(key=self.key, sent=False, keep_ledger=bool(self.jobs)))
            attempt += 1
            try:
                return await self._submit(unit, plan, attempt)
            except errors.TransientError as exc:
                await self._after_transient(exc, attempt)
            except errors.PermanentError as exc:
                if isinstance(exc, _STOP_ERRORS):
                    self.stop.set(f"{exc.status_code} {exc.message}")
                raise _Ended(self.fail(exc, attempts=attempt, keep_ledger=bool(self.jobs))) from None

    async def _resume_job(self, job: AsyncJob) -> Answer | None:
        """Poll a job an earlier run submitted; None when the API no longer knows it."""
        try:
            return await self.client.wait(job, self.cfg.poll)
        except errors.NotFound:
            log.warning("job %s of %s is unknown to the API (expired?); submitting again", job.runId, self.f.url)
            return None
        except errors.TransientError as exc:
            raise _Ended(self.fail(exc, attempts=1, keep_ledger=True)) from None
        except errors.PermanentError as exc:
            raise _Ended(self.fail(exc, attempts=1)) from None

    async def _submit(self, unit: Unit, plan: UploadPlan, attempt: int) -> Answer:
        opts = self.cfg.options
        common: dict[str, Any] = dict(model=opts.model, language=opts.language, diarize=opts.diarize,
                                      tag_audio_events=opts.tag_audio_events,
                                      idempotency_key=self.key if plan.single else f"{self.key}:{unit.index}")
        if unit.url is not None:
            answer = await self.client.transcribe_url(unit.url, **common)
        else:
            assert unit.data is not None
            answer = await self.client.transcribe_bytes(unit.data, unit.name or self.f.name, **common)
        if not isinstance(answer, AsyncJob):
            return answer
        # Durable before polling: a run that dies now resumes this job next time.
        self.jobs[str(unit.index)] = answer.model_dump(exclude_none=True)
        self.entry["state"] = "submitted"
        await asyncio.to_thread(self.ledger.write, self.key, self.entry)
        try:
            return await self.client.wait(answer, self.cfg.poll)
        except errors.TransientError as exc:  # deadline or API down: the job may still finish
            raise _Ended(self.fail(exc, attempts=attempt, keep_ledger=True)) from None

    async def _after_transient(self, exc: errors.TransientError, attempt: int) -> None:
        """Wait before the next attempt, or end the file when it must not be tried again."""
        if exc.maybe_sent and not self.cfg.endpoint.idempotent and not self.cfg.resend_unknown:
            raise _Ended(self.fail(errors.TimeoutError_(
                f"outcome unknown: {exc.message}; the request may have been processed and paid for, "
                "so it is not re-sent (re-send with --resend-unknown)", code="outcome_unknown"),
                attempts=attempt, kind="unknown", keep_ledger=True))
        if attempt >= self.cfg.retry.max_attempts:
            raise _Ended(self.fail(exc, attempts=attempt, keep_ledger=bool(self.jobs)))
        await asyncio.sleep(self.cfg.retry.delay(attempt - 1, exc.retry_after))
