"""A batch of files: the unit of work of one Prefect task.

A batch (tens to hundreds of files) is one task run, with requests in flight
concurrently inside it: Prefect costs ~10 ms per task run and slows down past a few
thousand task runs per flow run, so one task per file would not scale to an archive.
The task is thin: sending is `tasks.sending`, rows are `tasks.rows`, writing `tasks.tables`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NONE

from tasks import tables
from tasks.batch_config import BatchConfig
from tasks.discovery import AudioFile
from tasks.ledger import Ledger
from tasks.outcome import Outcome
from tasks.rows import FailureRow, SegmentRow, TranscriptRow, words_table
from tasks.sending import StopSignal, transcribe_one


@dataclass
class BatchResult:
    transcribed: int = 0
    failed: int = 0
    not_sent: int = 0
    audio_s: float = 0.0
    cost: float = 0.0
    failures: list[str] = field(default_factory=list)  # "source: message", for the summary
    #: (source, reason) of each failed file: the run's failures artifact groups them by reason.
    failed_files: list[tuple[str, str]] = field(default_factory=list)
    stop_reason: str | None = None  # set when the API said to stop sending (402, daily limit)

    def add(self, o: Outcome) -> None:
        if not o.sent:
            self.not_sent += 1
        elif o.transcript is not None:
            self.transcribed += 1
            self.audio_s += o.transcript.duration_s or 0.0
            self.cost += o.transcript.cost or 0.0
        elif o.failure is not None:
            self.failed += 1
            self.failures.append(f"{o.failure.source}: {o.failure.message}")
            status = f" {o.failure.status_code}" if o.failure.status_code else ""
            self.failed_files.append((o.failure.source, f"{o.failure.error_type}{status}: {o.failure.message}"))


@task(name="transcribe_batch", cache_policy=NONE, persist_result=False)
def transcribe_batch(files: list[AudioFile], cfg: BatchConfig, batch_no: int) -> BatchResult:
    """Transcribe `files`, write their rows as one part per table, clear their ledger entries."""
    ledger = Ledger(cfg.out, cfg.storage_options)
    stop = StopSignal()
    outcomes = asyncio.run(_send_all(files, cfg, ledger, stop))
    result = BatchResult(stop_reason=stop.reason)
    for o in outcomes:
        result.add(o)
    write_outcomes(cfg, outcomes, part_name=_part_name(cfg.run_id, batch_no))
    ledger.clear([o.key for o in outcomes if o.sent and not o.keep_ledger])
    return result


async def _send_all(files: list[AudioFile], cfg: BatchConfig, ledger: Ledger, stop: StopSignal) -> list[Outcome]:
    gate = asyncio.Semaphore(cfg.concurrency)
    async with cfg.endpoint.client(max_connections=cfg.concurrency, rate_limiter=cfg.rate_limiter) as client:

        async def one(f: AudioFile) -> Outcome:
            async with gate:
                return await transcribe_one(client, f, cfg, ledger, stop)

        return list(await asyncio.gather(*(one(f) for f in files)))


def _part_name(run_id: str, batch_no: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"part-{stamp}-{run_id[:8]}-{batch_no:05d}"


def write_outcomes(cfg: BatchConfig, outcomes: list[Outcome], *, part_name: str) -> None:
    """One part per table. Words and segments first, transcripts last: a re-run skips on
    transcripts, so a crash between these writes re-does the file rather than leaving it
    without its words."""
    transcripts = [o.transcript for o in outcomes if o.transcript is not None]
    parts = {
        "words": words_table([o.words for o in outcomes if o.words is not None]),
        "segments": SegmentRow.table([s for o in outcomes for s in o.segments]),
        "failures": FailureRow.table([o.failure for o in outcomes if o.failure is not None]),
        "transcripts": TranscriptRow.table(transcripts),
    }
    for table, data in parts.items():
        tables.write_part(cfg.out, table, data, part_name=part_name, storage_options=cfg.storage_options)
