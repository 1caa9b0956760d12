"""Transcribe a batch of files: the unit of work of one Prefect task.

A batch (tens to hundreds of files) is one task run, with requests in flight
concurrently inside it: Prefect costs ~10 ms per task run and slows down past a few
thousand task runs per flow run, so one task per file would not scale to an archive.

Retries happen here, per file, not as Prefect task retries: a retry of the task would
re-send the whole batch, and Prefect's `retry_jitter_factor` does nothing for tasks.
Only transient errors are retried (exponential backoff, full jitter, at least the
server's Retry-After); a permanent error becomes a failure row at once.

Money: every request is written to the ledger (tasks/ledger.py) before it leaves, every
asynchronous runId before polling starts, and entries are cleared only once the rows are
written. A request whose answer was lost is re-sent only when the API de-duplicates by
idempotency key; otherwise it is reported, not paid for twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
from prefect import task
from prefect.cache_policies import NONE
from pydantic import SecretStr

from stt import errors
from stt.client import PollPolicy, STTClient
from stt.contract import AsyncJob, StatusResponse, TranscribeResponse
from tasks import tables
from tasks.ledger import Ledger
from tasks.sources import AudioFile

log = logging.getLogger("bulkscribe.tasks")


@dataclass(frozen=True)
class Endpoint:
    url: str
    api_key: SecretStr
    timeout_s: float = 1800.0
    #: The API answers a repeated Idempotency-Key with the first answer, without charging
    #: again (the embedded server does; the hosted API documents no such key).
    idempotent: bool = False

    def client(self, max_connections: int = 100) -> STTClient:
        import httpx

        timeout = httpx.Timeout(connect=15.0, read=self.timeout_s, write=300.0, pool=None)
        return STTClient(self.url, self.api_key.get_secret_value(), timeout=timeout,
                         max_connections=max_connections)


@dataclass(frozen=True)
class JobOptions:
    """What is asked of the API for every file; part of the key a re-run skips on."""

    model: str
    language: str = "auto"
    diarize: bool = False
    tag_audio_events: bool = False

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def request_key(self, fingerprint: str) -> str:
        return hashlib.sha256(f"{fingerprint}\n{self.as_json()}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full jitter (uniform in [0, base*2^attempt], capped), never below Retry-After."""
        jittered = random.uniform(0, min(self.max_s, self.base_s * 2 ** attempt))
        return max(jittered, min(retry_after or 0.0, self.max_s * 5))


@dataclass
class BatchConfig:
    out: str
    run_id: str
    options: JobOptions
    endpoint: Endpoint
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    concurrency: int = 4
    max_direct_upload_bytes: int = 3 * 1024 * 1024
    storage_options: dict = field(default_factory=dict)
    #: Ledger entries left by earlier runs, by request key (read once per run).
    outstanding: dict[str, dict] = field(default_factory=dict)
    #: Re-send requests whose earlier answer was lost even if the API cannot de-duplicate.
    resend_unknown: bool = False


@dataclass
class BatchResult:
    transcribed: int = 0
    failed: int = 0
    not_sent: int = 0
    audio_s: float = 0.0
    cost: float = 0.0
    failures: list[str] = field(default_factory=list)  # "source: message", for the summary
    stop_reason: str | None = None  # set when the API said to stop sending (402, daily limit)


@dataclass
class Outcome:
    key: str
    transcript: dict | None = None
    words: list[dict] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)
    failure: dict | None = None
    sent: bool = True
    #: Keep the ledger entry: the request may have been paid for without a result.
    keep_ledger: bool = False


class _Stop:
    """Shared by the files of a batch: once the API says stop, nothing more is sent."""

    def __init__(self) -> None:
        self.reason: str | None = None


_STOP_ERRORS = (errors.PaymentRequired, errors.DailyLimitExceeded, errors.Unauthorized)


@task(name="transcribe_batch", cache_policy=NONE, persist_result=False)
def transcribe_batch(files: list[AudioFile], cfg: BatchConfig, batch_no: int) -> BatchResult:
    """Transcribe `files`, write their rows as one part per table, clear their ledger entries."""
    ledger = Ledger(cfg.out, cfg.storage_options)
    stop = _Stop()
    outcomes = asyncio.run(_run_batch(files, cfg, ledger, stop))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    part = f"part-{stamp}-{cfg.run_id[:8]}-{batch_no:05d}"
    rows: dict[str, list[dict]] = {"transcripts": [], "failures": [], "words": [], "segments": []}
    result = BatchResult(stop_reason=stop.reason)
    for o in outcomes:
        if not o.sent:
            result.not_sent += 1
        elif o.transcript is not None:
            rows["transcripts"].append(o.transcript)
            rows["words"].extend(o.words)
            rows["segments"].extend(o.segments)
            result.transcribed += 1
            result.audio_s += o.transcript["duration_s"] or 0.0
            result.cost += o.transcript["cost"] or 0.0
        elif o.failure is not None:
            rows["failures"].append(o.failure)
            result.failed += 1
            result.failures.append(f"{o.failure['source']}: {o.failure['message']}")
    # Words and segments first, transcripts last: a re-run skips on transcripts, so a crash
    # between these writes re-does the file rather than leaving it without its words.
    for table in ("words", "segments", "failures", "transcripts"):
        tables.write_part(cfg.out, table, rows[table], part_name=part, storage_options=cfg.storage_options)
    ledger.clear([o.key for o in outcomes if o.sent and not o.keep_ledger])
    return result


async def _run_batch(files: list[AudioFile], cfg: BatchConfig, ledger: Ledger, stop: _Stop) -> list[Outcome]:
    gate = asyncio.Semaphore(cfg.concurrency)
    async with cfg.endpoint.client(max_connections=cfg.concurrency) as client:

        async def one(f: AudioFile) -> Outcome:
            async with gate:
                return await transcribe_one(client, f, cfg, ledger, stop)

        return list(await asyncio.gather(*(one(f) for f in files)))


async def transcribe_one(client: STTClient, f: AudioFile, cfg: BatchConfig, ledger: Ledger,
                         stop: _Stop) -> Outcome:
    opts = cfg.options
    key = opts.request_key(f.fingerprint)
    prior = cfg.outstanding.get(key)

    # 1. A job submitted by an earlier run: poll it, do not pay again.
    if prior and prior.get("job"):
        job = AsyncJob.model_validate(prior["job"])
        try:
            return _success(f, cfg, key, await client.wait(job, cfg.poll), resumed=True)
        except errors.NotFound:
            log.warning("job %s of %s is unknown to the API (expired?); submitting again", job.runId, f.url)
        except errors.PermanentError as exc:
            return _failure(f, cfg, key, exc, attempts=1)
        except errors.TransientError as exc:
            return _failure(f, cfg, key, exc, attempts=1, keep_ledger=True)

    # 2. A request sent by an earlier run whose answer was never recorded.
    idem_ok = cfg.endpoint.idempotent
    if prior and prior.get("state") == "sent" and not (idem_ok or cfg.resend_unknown):
        return _failure(f, cfg, key, errors.PermanentError(
            f"outcome unknown: sent by run {prior.get('run_id', '?')[:8]} at {prior.get('updated_at', '?')} "
            "with no answer recorded; not re-sent so as not to pay twice (re-send with --resend-unknown)",
            code="outcome_unknown"), attempts=0, kind="unknown", keep_ledger=True)

    if f.size > cfg.max_direct_upload_bytes:
        return _failure(f, cfg, key, errors.PayloadTooLarge(
            f"file is {f.size} bytes, over the {cfg.max_direct_upload_bytes}-byte direct-upload limit; "
            "large-file modes are not available for this source"), attempts=0, kind="skipped")
    try:
        data = await asyncio.to_thread(_read_bytes, f.url, cfg.storage_options)
    except OSError as exc:
        return _failure(f, cfg, key, errors.BadRequest(f"could not read the file: {exc}"), attempts=0)

    attempt = 0
    while True:
        if stop.reason:
            return Outcome(key=key, sent=False)
        attempt += 1
        await asyncio.to_thread(ledger.write, key, {
            "state": "sent", "source": f.url, "fingerprint": f.fingerprint, "model": opts.model,
            "run_id": cfg.run_id})
        try:
            answer = await client.transcribe_bytes(
                data, f.name, model=opts.model, language=opts.language, diarize=opts.diarize,
                tag_audio_events=opts.tag_audio_events, idempotency_key=key,
            )
            if isinstance(answer, AsyncJob):
                # Durable before polling: a run that dies now resumes this job next time.
                await asyncio.to_thread(ledger.write, key, {
                    "state": "submitted", "job": answer.model_dump(exclude_none=True), "source": f.url,
                    "fingerprint": f.fingerprint, "model": opts.model, "run_id": cfg.run_id})
                try:
                    answer = await client.wait(answer, cfg.poll)
                except errors.TransientError as exc:  # deadline or API down: the job may still finish
                    return _failure(f, cfg, key, exc, attempts=attempt, keep_ledger=True)
            return _success(f, cfg, key, answer)
        except errors.TransientError as exc:
            if exc.maybe_sent and not idem_ok and not cfg.resend_unknown:
                return _failure(f, cfg, key, errors.TimeoutError_(
                    f"outcome unknown: {exc.message}; the request may have been processed and paid for, "
                    "so it is not re-sent (re-send with --resend-unknown)", code="outcome_unknown"),
                    attempts=attempt, kind="unknown", keep_ledger=True)
            if attempt >= cfg.retry.max_attempts:
                return _failure(f, cfg, key, exc, attempts=attempt)
            await asyncio.sleep(cfg.retry.delay(attempt - 1, exc.retry_after))
        except errors.PermanentError as exc:
            if isinstance(exc, _STOP_ERRORS) and not stop.reason:
                stop.reason = f"{exc.status_code} {exc.message}"
            return _failure(f, cfg, key, exc, attempts=attempt)


def _read_bytes(url: str, storage_options: dict) -> bytes:
    with fsspec.open(url, "rb", **(storage_options or {})) as fh:
        return fh.read()


def _success(f: AudioFile, cfg: BatchConfig, key: str, answer: TranscribeResponse | StatusResponse,
             resumed: bool = False) -> Outcome:
    meta = answer.metadata
    minutes = None
    if meta is not None:
        minutes = meta.actualDuration if meta.actualDuration is not None else meta.chargedDuration
    model = cfg.options.model
    segments = (answer.diarization.segments if getattr(answer, "diarization", None) else None) or []
    words = getattr(answer, "words", None) or []
    speakers = len({s.speaker for s in segments}) if segments else None
    transcript = {
        "source": f.url, "fingerprint": f.fingerprint, "request_key": key, "model": model,
        "language": (meta.language if meta else None) or cfg.options.language,
        "options": cfg.options.as_json(), "text": answer.transcription or "",
        "duration_s": round(minutes * 60.0, 3) if minutes is not None else None,
        "cost": meta.cost if meta else None, "currency": meta.currency if meta else None,
        "upload_mode": "direct", "file_size": f.size, "speaker_count": speakers, "status": "ok",
        "run_id": cfg.run_id, "transcribed_at": datetime.now(UTC),
    }
    word_rows = [
        {"source": f.url, "fingerprint": f.fingerprint, "model": model, "word_index": i, "text": w.text,
         "start": w.start, "end": w.end, "type": w.type, "speaker": w.speaker_id}
        for i, w in enumerate(words)
    ]
    segment_rows = [
        {"source": f.url, "fingerprint": f.fingerprint, "model": model, "segment_index": i, "speaker": s.speaker,
         "start": s.start, "end": s.end, "text": s.text}
        for i, s in enumerate(segments)
    ]
    return Outcome(key=key, transcript=transcript, words=word_rows, segments=segment_rows)


def _failure(f: AudioFile, cfg: BatchConfig, key: str, exc: errors.STTError, *, attempts: int,
             kind: str | None = None, keep_ledger: bool = False) -> Outcome:
    row: dict[str, Any] = {
        "source": f.url, "fingerprint": f.fingerprint, "request_key": key, "model": cfg.options.model,
        "error_kind": kind or exc.kind, "error_type": type(exc).__name__.rstrip("_"),
        "status_code": exc.status_code, "message": exc.message, "attempts": attempts,
        "run_id": cfg.run_id, "failed_at": datetime.now(UTC),
    }
    return Outcome(key=key, failure=row, keep_ledger=keep_ledger)
