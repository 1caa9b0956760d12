"""Sending one file: plan, claim, resume, reserve its cost, send its unit(s), keep each answer.

One file's life, each step recorded before the next (see `tasks.ledger`, `tasks.claims`):
plan the upload and learn the content -> claim the request (or leave it to the run that
holds it) -> read what earlier runs recorded -> reserve its estimated cost -> for each
unit: `sent`, the request, the answer written to the ledger the moment it arrives -> rows.

Retries happen per unit, not as Prefect task retries: a retry of the task would re-send
the whole batch. Only transient errors are retried (exponential backoff, full jitter, at
least the server's Retry-After); a permanent error becomes a failure row.

Isolation: whatever goes wrong with one file (an unreadable file, a bug while stitching)
becomes that file's failure row; the batch and the run go on. A file never sent never
becomes "unknown".
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from stt import errors
from stt.client import STTClient
from stt.contract import AsyncJob
from tasks import audio_prep
from tasks.batch_config import BatchConfig
from tasks.claims import Claim, Claims
from tasks.discovery import AudioFile
from tasks.ledger import Entry, Ledger
from tasks.outcome import Outcome, as_copy, failure, success
from tasks.stitching import merge_answers
from tasks.upload import Unit, UploadPlan, plan_upload
from tasks.wire import Answer, Span, answer_from_json, answer_to_json

log = logging.getLogger("bulkscribe.tasks")

_STOP_ERRORS = (errors.PaymentRequired, errors.DailyLimitExceeded, errors.Unauthorized)


class StopSignal:
    """Shared by the files of a batch: once the API says stop, nothing more is sent.

    Only the API's own refusals (402, daily limit, a revoked key) set it. A budget
    refusal does not: files that reserved their share are still sent."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason


class Ended(Exception):
    """The file ends here with this outcome."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


async def transcribe_one(client: STTClient, f: AudioFile, cfg: BatchConfig, ledger: Ledger, claims: Claims,
                         stop: StopSignal, *, wait_for_duplicate: bool = False,
                         slots: asyncio.Semaphore | None = None) -> Outcome:
    """One file, start to end; every way it can end is an Outcome, never an exception.

    `wait_for_duplicate`: when another file of this run holds the same request (same
    content), wait for its answer and copy it, instead of ending as `duplicate`.
    `slots`: held around each request (default: `cfg.concurrency` of this file's own)."""
    slots = slots or asyncio.Semaphore(cfg.concurrency)
    return await FileSend(client, f, cfg, ledger, claims, stop, slots, wait_for_duplicate).run()


class FileSend:
    def __init__(self, client: STTClient, f: AudioFile, cfg: BatchConfig, ledger: Ledger, claims: Claims,
                 stop: StopSignal, slots: asyncio.Semaphore, wait_for_duplicate: bool = False) -> None:
        self.client, self.f, self.cfg, self.ledger, self.claims, self.stop = client, f, cfg, ledger, claims, stop
        self.slots = slots
        self.wait_for_duplicate = wait_for_duplicate
        self.key = ""
        self.plan: UploadPlan | None = None
        self.entry: Entry = {}
        #: The claim holds the request's first entry, not yet published (see `tasks.ledger`).
        self.carried = False
        self.attempts = 0
        self.fresh_cost = 0.0  # what this run paid for the file
        #: A request may have been paid without an answer (an earlier run's, or a lost answer).
        self.maybe_paid = False

    # -- outcomes -------------------------------------------------------------------------

    def _keep_entry(self) -> bool:
        """The entry records something paid, or possibly paid, with no rows yet."""
        return self.maybe_paid or bool(self.entry.get("jobs")) or bool(self.entry.get("answers"))

    def fail(self, exc: errors.STTError, *, kind: str | None = None) -> Outcome:
        return failure(self.f, self.cfg.options, self.key, exc, attempts=self.attempts, run_id=self.cfg.run_id,
                       kind=kind, keep_ledger=self._keep_entry())

    def not_sent(self, reason: str, *, deferred: bool = False) -> Outcome:
        return Outcome(key=self.key, sent=False, not_sent_reason=reason, deferred=deferred,
                       keep_ledger=self._keep_entry())

    # -- the file's life ------------------------------------------------------------------

    async def run(self) -> Outcome:
        try:
            return await self._run()
        except Ended as ended:
            return ended.outcome
        except Exception as exc:  # noqa: BLE001 - one file's trouble never stops the batch
            log.warning("%s: %s: %s", self.f.url, type(exc).__name__, exc)
            return self.fail(_as_error(exc))
        finally:
            if self.plan is not None and self.plan.cleanup is not None:
                await asyncio.to_thread(self.plan.cleanup)

    async def _run(self) -> Outcome:
        if self.stop.reason:
            return self.not_sent(self.stop.reason)
        worst = self.cfg.worst_direct_cost()
        first = await asyncio.to_thread(self._prepare, worst)
        if first is None:
            return Outcome(key=self.key, sent=False, reuse=True)
        copied = await self._claim(*first)
        if copied is not None:
            return copied
        if self.entry.get("complete"):
            return self._rows(self._recorded())
        if self.entry.get("state") == "sent" and not self.entry.get("jobs"):
            self.maybe_paid = True  # an earlier run sent it and recorded no answer
            if not (self.cfg.endpoint.idempotent or self.cfg.resend_unknown):
                return self.fail(errors.PermanentError(
                    f"outcome unknown: sent by run {str(self.entry.get('run_id', '?'))[:8]} at "
                    f"{self.entry.get('updated_at', '?')} with no answer recorded; not re-sent so as not to pay "
                    "twice (re-send with --resend-unknown)", code="outcome_unknown"), kind="unknown")
        return await self._reserve_and_send(worst)

    def _prepare(self, worst: float) -> tuple[Claim, Entry | None] | None:
        """Plan the upload, learn the request key, claim it (one thread hop); None when
        the content is already transcribed in OUT."""
        self.plan = plan_upload(self.f, self.cfg.upload, price_per_min=self.cfg.price_per_min,
                                probe=self._should_probe(worst))
        assert self.plan.content is not None
        self.key = self.cfg.options.request_key(self.plan.content)
        if self.key in self.cfg.done_contents:
            return None
        return self._acquire(self.key)

    async def _claim(self, claim: Claim, recorded: Entry | None) -> Outcome | None:
        """Claim the request; an Outcome when this file ends here (someone else has it)."""
        while True:
            if claim.status == "mine":
                self.entry = recorded or {}
                self.carried = recorded is None
                return None
            if claim.status == "busy":
                return self.not_sent(f"claimed by run {claim.holder[:8]}, still running", deferred=True)
            if claim.status == "done":
                return Outcome(key=self.key, sent=False, reuse=True)
            if not self.wait_for_duplicate:
                return Outcome(key=self.key, sent=False, duplicate=True)
            entry = await asyncio.to_thread(self.ledger.read, self.key) or {}
            if entry.get("complete"):
                self.entry = entry
                return as_copy(self._rows(self._recorded()), self.f)
            await asyncio.sleep(0.5)
            claim, recorded = await asyncio.to_thread(self._acquire, self.key)

    def _acquire(self, key: str) -> tuple[Claim, Entry | None]:
        """The claim (carrying the request's first entry), and once it is ours what the
        ledger holds for the request."""
        assert self.plan is not None
        first = {**self._identity(self.plan), "jobs": {}, "answers": {}, "updated_at": datetime.now(UTC).isoformat()}
        claim = self.claims.acquire(key, first)
        return claim, self.ledger.read(key) if claim.status == "mine" else None

    def _identity(self, plan: UploadPlan) -> Entry:
        # The owner too: a claim holding this entry (see tasks.ledger) still says whose it is.
        return {**self.claims.owner_fields, "mode": plan.mode, "source": self.f.url,
                "fingerprint": self.f.fingerprint, "model": self.cfg.options.model, "run_id": self.cfg.run_id}

    def _recorded(self) -> list[tuple[Span, Answer]]:
        answers = self.entry.get("answers") or {}
        return [answer_from_json(int(i), answers[i]) for i in sorted(answers, key=int)]

    def _should_probe(self, worst: float) -> bool:
        # Probing a small file's duration costs more CPU than sending it; skip it while the
        # budget could absorb a worst-case file for every request in flight, and reserve that
        # worst case instead (settled to the real charge when the answer comes).
        budget = self.cfg.budget
        return budget is not None and budget.remaining() < worst * max(8, 2 * self.cfg.concurrency)

    async def _reserve_and_send(self, worst: float) -> Outcome:
        """Reserve the file's estimated cost (unless resuming what an earlier run paid for), send,
        settle the reservation to what was paid (kept whole when the outcome is unknown)."""
        assert self.plan is not None
        budget = self.cfg.budget
        resuming = bool(self.entry.get("jobs") or self.entry.get("answers"))
        reserved = 0.0
        if budget is not None and not resuming:
            reserved = self.plan.estimated_cost if self.plan.estimated_cost is not None else worst
            if not budget.reserve(reserved):
                return self.not_sent(budget.refusal or "budget reached")
        try:
            return await self._send_plan(self.plan)
        finally:
            if budget is not None and reserved:
                lost = self.maybe_paid and not self.entry.get("complete")
                budget.settle(reserved, reserved if lost else self.fresh_cost)

    # -- sending ----------------------------------------------------------------------------

    async def _send_plan(self, plan: UploadPlan) -> Outcome:
        self.entry = {**self.entry, **self._identity(plan), "jobs": dict(self.entry.get("jobs") or {}),
                      "answers": dict(self.entry.get("answers") or {})}
        try:
            for unit in plan.units():
                if str(unit.index) not in self.entry["answers"]:
                    await self._send_unit(unit, plan)
        except audio_prep.AudioPrepError as exc:
            return self.fail(errors.BadRequest(str(exc)))
        if not plan.single:
            self.entry["complete"] = True
            await asyncio.to_thread(self.ledger.write, self.key, self.entry)
        return self._rows(self._recorded())

    def _rows(self, answers: list[tuple[Span, Answer]]) -> Outcome:
        mode = self.plan.mode if self.plan is not None else str(self.entry.get("mode", "direct"))
        out = success(self.f, self.cfg.options, self.key, merge_answers(answers), mode=mode,
                      run_id=self.cfg.run_id)
        out.fresh_cost = self.fresh_cost
        return out

    async def _send_unit(self, unit: Unit, plan: UploadPlan) -> None:
        """Send one unit with retries (or poll its recorded job); its answer is recorded at once."""
        job = self.entry["jobs"].get(str(unit.index))
        answer = None
        if job:
            async with self.slots:
                answer = await self._resume_job(AsyncJob.model_validate(job))
        while answer is None:
            self.attempts += 1
            try:
                async with self.slots:  # a slot for the request only: not for the back-off, nor the ledger
                    if self.stop.reason:
                        raise Ended(self.not_sent(self.stop.reason))
                    answer = await self._submit(unit, plan)
            except errors.TransientError as exc:
                await self._after_transient(exc)
            except errors.PermanentError as exc:
                if isinstance(exc, _STOP_ERRORS):
                    self.stop.set(f"{exc.status_code} {exc.message}")
                raise Ended(self.fail(exc)) from None
        if not getattr(answer, "replayed", False) and answer.metadata is not None:
            self.fresh_cost += answer.metadata.cost or 0.0
        span = Span(unit.index, unit.start_s, unit.end_s, unit.own_start_s)
        self.entry["answers"][str(unit.index)] = answer_to_json(span, answer)
        self.entry.update(state="answered", complete=plan.single)
        await asyncio.to_thread(self.ledger.write, self.key, self.entry)

    async def _resume_job(self, job: AsyncJob) -> Answer | None:
        """Poll a job an earlier attempt submitted; None when the API no longer knows it."""
        try:
            return await self.client.wait(job, self.cfg.poll)
        except errors.NotFound:
            log.warning("job %s of %s is unknown to the API (expired?); submitting again", job.runId, self.f.url)
            return None
        except errors.STTError as exc:
            self.attempts += 1
            raise Ended(self.fail(exc)) from None

    async def _submit(self, unit: Unit, plan: UploadPlan) -> Answer:
        opts = self.cfg.options
        common: dict[str, Any] = dict(model=opts.model, language=opts.language, diarize=opts.diarize,
                                      tag_audio_events=opts.tag_audio_events,
                                      idempotency_key=self.key if plan.single else f"{self.key}:{unit.index}")
        self.entry["state"] = "sent"
        await self._record_sent()
        if unit.url is not None:
            answer = await self.client.transcribe_url(unit.url, **common)
        else:
            assert unit.data is not None
            answer = await self.client.transcribe_bytes(unit.data, unit.name or self.f.name, **common)
        if not isinstance(answer, AsyncJob):
            return answer
        # Durable before polling: a run that dies now resumes this job next time.
        self.entry["jobs"][str(unit.index)] = answer.model_dump(exclude_none=True)
        self.entry["state"] = "submitted"
        await asyncio.to_thread(self.ledger.write, self.key, self.entry)
        return await self.client.wait(answer, self.cfg.poll)

    async def _record_sent(self) -> None:
        """Durable before the request leaves: the claim's carried entry published (a link),
        or the entry written."""
        path = self.claims.held_path(self.key) if self.carried else None
        self.carried = False
        if path is None or not self.ledger.publish(self.key, path):
            await asyncio.to_thread(self.ledger.write, self.key, self.entry)

    async def _after_transient(self, exc: errors.TransientError) -> None:
        """Wait before the next attempt, or end the file when it must not be tried again."""
        if exc.maybe_sent:
            self.maybe_paid = True
            if not self.cfg.endpoint.idempotent and not self.cfg.resend_unknown:
                raise Ended(self.fail(type(exc)(
                    f"outcome unknown: {exc.message}; the request may have been processed and paid for, "
                    "so it is not re-sent (re-send with --resend-unknown)", code="outcome_unknown",
                    status_code=exc.status_code), kind="unknown"))
        if self.entry.get("jobs") and exc.code == "poll_deadline":
            raise Ended(self.fail(exc))  # the job may still finish: its entry is kept for the next run
        if self.attempts >= self.cfg.retry.max_attempts:
            raise Ended(self.fail(exc))
        await asyncio.sleep(self.cfg.retry.delay(self.attempts - 1, exc.retry_after))


def _as_error(exc: Exception) -> errors.STTError:
    """An unexpected exception as the failure row's reason (permanent: it will recur)."""
    if isinstance(exc, errors.STTError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return errors.PermanentError(f"file not found (a dangling symlink?): {exc.strerror or exc}",
                                     code="unreadable")
    if isinstance(exc, OSError):
        return errors.PermanentError(f"cannot read the file: {type(exc).__name__}: {exc.strerror or exc}",
                                     code="unreadable")
    return errors.PermanentError(f"{type(exc).__name__}: {exc}", code="internal")
