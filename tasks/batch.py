"""A batch of files: the unit of work of one Prefect task.

A batch (tens to hundreds of files) is one task run, with requests in flight
concurrently inside it: Prefect costs ~10 ms per task run and slows down past a few
thousand task runs per flow run, so one task per file would not scale to an archive.
The task is thin: sending is `tasks.sending`, rows are `tasks.rows`, writing `tasks.tables`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NONE

from stt.client import STTClient
from tasks import tables
from tasks.batch_config import BatchConfig
from tasks.claims import Claims, Owner
from tasks.discovery import AudioFile
from tasks.ledger import Ledger
from tasks.outcome import Outcome
from tasks.reuse import copied_rows
from tasks.rows import FailureRow, SegmentRow, TranscriptRow, words_table
from tasks.sending import StopSignal, transcribe_one


@dataclass
class BatchResult:
    transcribed: int = 0
    reused: int = 0  # of `transcribed`: same content as another file, copied, not sent
    skipped: int = 0  # transcribed by another run after this one listed OUT
    failed: int = 0
    not_sent: int = 0
    deferred: int = 0  # of `not_sent`: claimed by another run still running
    audio_s: float = 0.0
    cost: float = 0.0  # what this batch paid
    failures: list[str] = field(default_factory=list)  # "source: message", for the summary
    #: (source, reason) of each failed file: the run's failures artifact groups them by reason.
    failed_files: list[tuple[str, str]] = field(default_factory=list)
    stop_reason: str | None = None  # why the run should send no more (402, daily limit, budget)
    not_sent_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, o: Outcome) -> None:
        if o.transcript is not None:
            self.transcribed += 1
            self.reused += o.reuse
            self.audio_s += o.transcript.duration_s or 0.0
            self.cost += o.fresh_cost
        elif o.already_done:
            self.skipped += 1
        elif o.failure is not None:
            self.failed += 1
            self.failures.append(f"{o.failure.source}: {o.failure.message}")
            status = f" {o.failure.status_code}" if o.failure.status_code else ""
            self.failed_files.append((o.failure.source, f"{o.failure.error_type}{status}: {o.failure.message}"))
        else:
            self.not_sent += 1
            self.deferred += o.deferred
            reason = o.not_sent_reason or "not sent"
            self.not_sent_reasons[reason] = self.not_sent_reasons.get(reason, 0) + 1


@task(name="transcribe_batch", cache_policy=NONE, persist_result=False)
def transcribe_batch(files: list[AudioFile], cfg: BatchConfig, batch_no: int) -> BatchResult:
    """Transcribe `files`, write their rows as one part per table, then settle the ledger."""
    ledger = Ledger(cfg.out, cfg.storage_options)
    claims = Claims(cfg.out, cfg.owner or Owner.this_process(cfg.run_id), cfg.storage_options)
    stop = StopSignal()
    try:
        sending = _send_all(files, cfg, ledger, claims, stop)
        outcomes = cfg.requests.run(sending) if cfg.requests is not None else asyncio.run(sending)
        outcomes = _with_copies(files, outcomes, cfg)
        result = BatchResult(stop_reason=stop.reason or (cfg.budget.refusal if cfg.budget else None))
        for o in outcomes:
            result.add(o)
        write_outcomes(cfg, outcomes, part_name=_part_name(cfg.run_id, batch_no))
        settle_ledger(outcomes, ledger, claims)
    finally:
        claims.close()
    return result


async def _send_all(files: list[AudioFile], cfg: BatchConfig, ledger: Ledger, claims: Claims,
                    stop: StopSignal) -> list[Outcome]:
    # Requests hold a slot (see tasks.request_loop); a file being read, claimed or recorded
    # does not, so up to twice `concurrency` files are under way for `concurrency` requests.
    under_way = asyncio.Semaphore(2 * cfg.concurrency)
    async with _client(cfg) as (client, slots):

        async def one(f: AudioFile) -> Outcome:
            async with under_way:
                return await transcribe_one(client, f, cfg, ledger, claims, stop, slots=slots)

        outcomes = list(await asyncio.gather(*(one(f) for f in files)))
        # Files whose content another file of this run is sending: wait for that answer
        # (outside the gate, so the file they wait for is never held up by them).
        return list(await asyncio.gather(*(
            _second_pass(client, f, o, cfg, ledger, claims, stop, slots) for f, o in zip(files, outcomes))))


@contextlib.asynccontextmanager
async def _client(cfg: BatchConfig) -> AsyncIterator[tuple[STTClient, asyncio.Semaphore]]:
    """The run's client and slots (threads), or this batch's own (Dask, Ray)."""
    if cfg.requests is not None:
        yield cfg.requests.client, cfg.requests.slots
        return
    async with cfg.endpoint.client(max_connections=cfg.concurrency, rate_limiter=cfg.rate_limiter) as client:
        yield client, asyncio.Semaphore(cfg.concurrency)


async def _second_pass(client: STTClient, f: AudioFile, o: Outcome, cfg: BatchConfig, ledger: Ledger,
                       claims: Claims, stop: StopSignal, slots: asyncio.Semaphore) -> Outcome:
    if not o.duplicate:
        return o
    return await transcribe_one(client, f, cfg, ledger, claims, stop, wait_for_duplicate=True, slots=slots)


def _with_copies(files: list[AudioFile], outcomes: list[Outcome], cfg: BatchConfig) -> list[Outcome]:
    """Rows copied from OUT for files whose content was transcribed before (under another name)."""
    wanted = [(o.key, f) for f, o in zip(files, outcomes) if o.reuse and o.transcript is None]
    if not wanted:
        return outcomes
    copies = copied_rows(cfg.out, wanted, storage_options=cfg.storage_options)
    result = []
    for f, o in zip(files, outcomes):
        if o.reuse and o.transcript is None:
            o = copies.get(f.url) or Outcome(key=o.key, sent=False,
                                             not_sent_reason="same content as a file in progress elsewhere")
        result.append(o)
    return result


def _part_name(run_id: str, batch_no: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"part-{stamp}-{run_id[:8]}-{batch_no:05d}"


def write_outcomes(cfg: BatchConfig, outcomes: list[Outcome], *, part_name: str) -> None:
    """One part per table. Words and segments first, transcripts last: a re-run skips on
    transcripts, so a crash between these writes re-does the file rather than leaving it
    without its words (and the ledger still holds its answer: nothing is paid again)."""
    parts = {
        "words": words_table([o.words for o in outcomes if o.words is not None]),
        "segments": SegmentRow.table([s for o in outcomes for s in o.segments]),
        "failures": FailureRow.table([o.failure for o in outcomes if o.failure is not None]),
        "transcripts": TranscriptRow.table([o.transcript for o in outcomes if o.transcript is not None]),
    }
    for table, data in parts.items():
        tables.write_part(cfg.out, table, data, part_name=part_name, storage_options=cfg.storage_options)


def settle_ledger(outcomes: list[Outcome], ledger: Ledger, claims: Claims) -> None:
    """After the rows are written: clear the entries of finished requests (their claims
    become tombstones), keep entries that record something paid without a row, and give
    every other claim up."""
    for o in outcomes:
        if not o.key or o.key not in claims.held or o.reuse:
            continue
        if o.transcript is not None:
            path = claims.held_path(o.key)
            retired = path is not None and ledger.retire(o.key, path)
            if not retired:
                ledger.clear([o.key])
            claims.finish(o.key, retired=retired)
            continue
        if not o.keep_ledger:
            ledger.clear([o.key])
        claims.release(o.key)
