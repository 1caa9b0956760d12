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
import io
import json
import logging
import random
import shutil
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE
from pydantic import SecretStr

from stt import errors
from stt.client import PollPolicy, RateLimiter, STTClient
from stt.contract import (
    DEFAULT_PRICES_USD_PER_MIN,
    MAX_URL_BYTES,
    AsyncJob,
    Diarization,
    Metadata,
    Segment,
    StatusResponse,
    TranscribeResponse,
    Word,
)
from tasks import audio_prep, tables
from tasks.ledger import Ledger
from tasks.sources import AudioFile, filesystem_for, is_remote, presign

log = logging.getLogger("bulkscribe.tasks")


@dataclass(frozen=True)
class Endpoint:
    url: str
    api_key: SecretStr
    timeout_s: float = 1800.0
    #: The API answers a repeated Idempotency-Key with the first answer, without charging
    #: again (the embedded server does; the hosted API documents no such key).
    idempotent: bool = False

    def client(self, max_connections: int = 100, rate_limiter: RateLimiter | None = None) -> STTClient:
        import httpx

        timeout = httpx.Timeout(connect=15.0, read=self.timeout_s, write=300.0, pool=None)
        return STTClient(self.url, self.api_key.get_secret_value(), timeout=timeout,
                         max_connections=max_connections, rate_limiter=rate_limiter)


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
    prices_usd_per_min: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRICES_USD_PER_MIN))
    #: Shared by all batches of a run: stops sending once the estimate reaches the cap.
    budget: Budget | None = None
    staging_url: str | None = None
    presign_expires_s: int = 900
    chunk_seconds: float = 600.0
    max_url_bytes: int = MAX_URL_BYTES
    rate_limiter: RateLimiter | None = None


class Budget:
    """Estimated spend of a run so far, against a cap (the --budget, or the balance).

    Shared by the batches of a run, which run in worker threads: hence the lock.
    """

    def __init__(self, cap_usd: float, what: str = "budget") -> None:
        self.cap, self.what = cap_usd, what
        self.spent = 0.0
        self._lock = threading.Lock()

    def remaining(self) -> float:
        with self._lock:
            return self.cap - self.spent

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Replace a reservation by what the API actually charged."""
        with self._lock:
            self.spent += actual_usd - reserved_usd

    def reserve(self, estimate_usd: float) -> str | None:
        """Count the file in, or say why not (the run then stops sending)."""
        with self._lock:
            if self.spent + estimate_usd > self.cap + 1e-12:
                return (f"{self.what} reached: {self.spent:.4f} USD estimated so far, the next file "
                        f"would add {estimate_usd:.4f} USD over the {self.cap:.4f} USD cap")
            self.spent += estimate_usd
            return None


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
    words: dict[str, list] = field(default_factory=dict)  # columns of the words table
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
    rows: dict[str, Any] = {"transcripts": [], "failures": [], "segments": []}
    word_parts = []
    result = BatchResult(stop_reason=stop.reason)
    for o in outcomes:
        if not o.sent:
            result.not_sent += 1
        elif o.transcript is not None:
            rows["transcripts"].append(o.transcript)
            if o.words:
                t = o.transcript
                word_parts.append((t["source"], t["fingerprint"], t["model"], o.words))
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
    rows["words"] = words_table(word_parts)
    for table in ("words", "segments", "failures", "transcripts"):
        tables.write_part(cfg.out, table, rows[table], part_name=part, storage_options=cfg.storage_options)
    ledger.clear([o.key for o in outcomes if o.sent and not o.keep_ledger])
    return result


async def _run_batch(files: list[AudioFile], cfg: BatchConfig, ledger: Ledger, stop: _Stop) -> list[Outcome]:
    gate = asyncio.Semaphore(cfg.concurrency)
    async with cfg.endpoint.client(max_connections=cfg.concurrency, rate_limiter=cfg.rate_limiter) as client:

        async def one(f: AudioFile) -> Outcome:
            async with gate:
                return await transcribe_one(client, f, cfg, ledger, stop)

        return list(await asyncio.gather(*(one(f) for f in files)))


async def transcribe_one(client: STTClient, f: AudioFile, cfg: BatchConfig, ledger: Ledger,
                         stop: _Stop) -> Outcome:
    """One file, start to end: resume, plan the upload mode, send its unit(s), stitch."""
    opts = cfg.options
    key = opts.request_key(f.fingerprint)
    prior = cfg.outstanding.get(key) or {}
    jobs: dict[str, dict] = dict(prior.get("jobs") or {})  # unit index -> submitted job, from earlier runs

    # A request sent by an earlier run whose answer was never recorded, and no job to poll.
    if prior.get("state") == "sent" and not jobs and not (cfg.endpoint.idempotent or cfg.resend_unknown):
        return _failure(f, cfg, key, errors.PermanentError(
            f"outcome unknown: sent by run {str(prior.get('run_id', '?'))[:8]} at {prior.get('updated_at', '?')} "
            "with no answer recorded; not re-sent so as not to pay twice (re-send with --resend-unknown)",
            code="outcome_unknown"), attempts=0, kind="unknown", keep_ledger=True)
    if stop.reason:
        return Outcome(key=key, sent=False)

    # Probing a small file's duration costs more CPU than sending it; skip it while the
    # budget could absorb a worst-case file for every request in flight, and reserve that
    # worst case instead (settled to the real charge when the answer comes).
    worst = _worst_direct_cost(cfg)
    probe = cfg.budget is not None and cfg.budget.remaining() < worst * max(8, 2 * cfg.concurrency)
    try:
        plan = await asyncio.to_thread(plan_upload, f, cfg, key, probe=probe)
    except errors.STTError as exc:
        return _failure(f, cfg, key, exc, attempts=0, kind="skipped" if exc.status_code == 413 else None)

    reserved = 0.0
    if cfg.budget is not None and not jobs:
        reserved = plan.estimated_cost if plan.estimated_cost is not None else worst
        refusal = cfg.budget.reserve(reserved)
        if refusal:
            stop.reason = stop.reason or refusal
            plan.cleanup()
            return Outcome(key=key, sent=False)
    outcome = await _send_plan(client, f, cfg, key, plan, jobs, ledger, stop)
    if reserved and not (outcome.failure and outcome.failure["error_kind"] == "unknown"):  # unknown: may be paid
        if outcome.transcript is not None:
            actual = outcome.transcript["cost"]
            actual = actual if actual is not None else (plan.estimated_cost or reserved)
        else:
            actual = 0.0  # errors are not charged
        cfg.budget.settle(reserved, actual)
    return outcome


def _worst_direct_cost(cfg: BatchConfig) -> float:
    """The most a direct upload can cost: its byte limit at 8 kbit/s, the lowest bitrate speech is stored at."""
    price = cfg.prices_usd_per_min.get(cfg.options.model) or max(cfg.prices_usd_per_min.values(), default=0.0)
    return cfg.max_direct_upload_bytes / 1000.0 / 60.0 * price


async def _send_plan(client: STTClient, f: AudioFile, cfg: BatchConfig, key: str, plan: UploadPlan,
                     jobs: dict, ledger: Ledger, stop: _Stop) -> Outcome:
    """Send the plan's unit(s) and merge the answers; the ledger entry is written first."""
    opts = cfg.options
    entry = {"state": "sent", "mode": plan.mode, "jobs": jobs, "source": f.url, "fingerprint": f.fingerprint,
             "model": opts.model, "run_id": cfg.run_id}
    try:
        await asyncio.to_thread(ledger.write, key, entry)
        parts: list[tuple[Any, StatusResponse | TranscribeResponse]] = []
        attempts = 0
        for unit in plan.units():
            answer, n = await _send_unit(client, f, cfg, key, unit, plan, entry, ledger, stop)
            attempts = max(attempts, n)
            parts.append((unit, answer))
    except _UnitFailed as failed:
        return failed.outcome
    except audio_prep.AudioPrepError as exc:
        return _failure(f, cfg, key, errors.BadRequest(str(exc)), attempts=0)
    finally:
        await asyncio.to_thread(plan.cleanup)
    return _success(f, cfg, key, _merge(parts), mode=plan.mode)


class _UnitFailed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


async def _send_unit(client: STTClient, f: AudioFile, cfg: BatchConfig, key: str, unit: Unit, plan: UploadPlan,
                     entry: dict, ledger: Ledger, stop: _Stop) -> tuple[StatusResponse | TranscribeResponse, int]:
    """Send one unit (the whole file, or one chunk) with retries; resume its job if one is recorded."""
    opts = cfg.options
    idem = key if plan.single else f"{key}:{unit.index}"
    recorded = entry["jobs"].get(str(unit.index))
    if recorded:
        job = AsyncJob.model_validate(recorded)
        try:
            return await client.wait(job, cfg.poll), 1
        except errors.NotFound:
            log.warning("job %s of %s is unknown to the API (expired?); submitting again", job.runId, f.url)
        except errors.TransientError as exc:
            raise _UnitFailed(_failure(f, cfg, key, exc, attempts=1, keep_ledger=True)) from None
        except errors.PermanentError as exc:
            raise _UnitFailed(_failure(f, cfg, key, exc, attempts=1)) from None

    attempt = 0
    while True:
        if stop.reason:
            raise _UnitFailed(Outcome(key=key, sent=False, keep_ledger=bool(entry["jobs"])))
        attempt += 1
        try:
            common = dict(model=opts.model, language=opts.language, diarize=opts.diarize,
                          tag_audio_events=opts.tag_audio_events, idempotency_key=idem)
            if unit.url is not None:
                answer = await client.transcribe_url(unit.url, **common)
            else:
                answer = await client.transcribe_bytes(unit.data, unit.name or f.name, **common)
            if isinstance(answer, AsyncJob):
                # Durable before polling: a run that dies now resumes this job next time.
                entry["jobs"][str(unit.index)] = answer.model_dump(exclude_none=True)
                entry["state"] = "submitted"
                await asyncio.to_thread(ledger.write, key, entry)
                try:
                    answer = await client.wait(answer, cfg.poll)
                except errors.TransientError as exc:  # deadline or API down: the job may still finish
                    raise _UnitFailed(_failure(f, cfg, key, exc, attempts=attempt, keep_ledger=True)) from None
            return answer, attempt
        except errors.TransientError as exc:
            if exc.maybe_sent and not cfg.endpoint.idempotent and not cfg.resend_unknown:
                raise _UnitFailed(_failure(f, cfg, key, errors.TimeoutError_(
                    f"outcome unknown: {exc.message}; the request may have been processed and paid for, "
                    "so it is not re-sent (re-send with --resend-unknown)", code="outcome_unknown"),
                    attempts=attempt, kind="unknown", keep_ledger=True)) from None
            if attempt >= cfg.retry.max_attempts:
                raise _UnitFailed(_failure(f, cfg, key, exc, attempts=attempt,
                                           keep_ledger=bool(entry["jobs"]))) from None
            await asyncio.sleep(cfg.retry.delay(attempt - 1, exc.retry_after))
        except errors.PermanentError as exc:
            if isinstance(exc, _STOP_ERRORS) and not stop.reason:
                stop.reason = f"{exc.status_code} {exc.message}"
            raise _UnitFailed(_failure(f, cfg, key, exc, attempts=attempt,
                                       keep_ledger=bool(entry["jobs"]))) from None


# -- upload modes -----------------------------------------------------------------------


@dataclass
class Unit:
    """What one request carries: bytes for a direct upload, or a URL the API fetches."""

    index: int
    offset_s: float
    end_s: float | None
    data: bytes | None = None
    url: str | None = None
    name: str | None = None


@dataclass
class UploadPlan:
    mode: str  # direct | url | staged | reencode | chunks
    units: Any  # () -> Iterator[Unit]; chunks are produced lazily, one in memory at a time
    single: bool = True
    duration_s: float | None = None
    estimated_cost: float | None = None
    cleanup: Any = lambda: None


def plan_upload(f: AudioFile, cfg: BatchConfig, key: str, *, dry_run: bool = False, probe: bool = True) -> UploadPlan:
    """Choose how a file travels, by size and place (blocking: run in a thread).

    <= the direct limit: multipart upload. Larger, in object storage (<= 500 MB): a
    presigned URL of short expiry. Larger and local: a staging bucket + presigned URL when
    one is configured, else re-encoded to 16 kHz mono Opus when that fits the direct
    limit, else chunks cut at silences. Over 500 MB anywhere: chunks.
    """
    price = cfg.prices_usd_per_min.get(cfg.options.model)

    def cost(duration_s: float | None) -> float | None:
        return None if duration_s is None or price is None else duration_s / 60.0 * price

    if f.size <= cfg.max_direct_upload_bytes:
        data = _read_bytes(f.url, cfg.storage_options)
        duration = _probe_or_none(io.BytesIO(data)) if probe else None
        return UploadPlan("direct", lambda: iter([Unit(0, 0.0, None, data=data)]), duration_s=duration,
                          estimated_cost=cost(duration))

    fs, path = filesystem_for(f.url, cfg.storage_options)
    with fs.open(path, "rb") as fh:
        try:
            duration = audio_prep.probe(fh).duration_s
        except audio_prep.AudioPrepError as exc:
            raise errors.BadRequest(f"cannot read the audio of this large file: {exc}") from None
    small_enough_for_url = f.size <= cfg.max_url_bytes

    if small_enough_for_url and is_remote(f.url):
        try:
            url = presign(f.url, cfg.presign_expires_s, cfg.storage_options)
        except ValueError:
            url = None
        if url:
            return UploadPlan("url", lambda: iter([Unit(0, 0.0, None, url=url)]), duration_s=duration,
                              estimated_cost=cost(duration))
    if small_enough_for_url and cfg.staging_url:
        if dry_run:
            return UploadPlan("staged", lambda: iter(()), duration_s=duration, estimated_cost=cost(duration))
        staged = f"{cfg.staging_url.rstrip('/')}/{key}{_ext(f.name)}"
        sfs, spath = filesystem_for(staged, cfg.storage_options)
        with fs.open(path, "rb") as src, sfs.open(spath, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
        url = presign(staged, cfg.presign_expires_s, cfg.storage_options)

        def remove_staged() -> None:
            try:
                sfs.rm_file(spath)
            except FileNotFoundError:
                pass

        return UploadPlan("staged", lambda: iter([Unit(0, 0.0, None, url=url)]), duration_s=duration,
                          estimated_cost=cost(duration), cleanup=remove_staged)
    if audio_prep.estimated_reencoded_bytes(duration) < cfg.max_direct_upload_bytes:
        def reencoded():
            with fs.open(path, "rb") as fh:
                data = audio_prep.reencode(fh)
            if len(data) > cfg.max_direct_upload_bytes:  # the estimate is an upper bound; belt and braces
                raise audio_prep.AudioPrepError(
                    f"re-encoded audio is {len(data)} bytes, still over the {cfg.max_direct_upload_bytes}-byte limit")
            yield Unit(0, 0.0, None, data=data, name=_stem(f.name) + ".ogg")

        return UploadPlan("reencode", reencoded, duration_s=duration, estimated_cost=cost(duration))

    def chunks():
        with fs.open(path, "rb") as fh:
            for c in audio_prep.split_at_silences(fh, max_chunk_s=cfg.chunk_seconds,
                                                  max_bytes=cfg.max_direct_upload_bytes):
                yield Unit(c.index, c.start_s, c.end_s, data=c.data, name=f"{_stem(f.name)}.part{c.index}.ogg")

    return UploadPlan("chunks", chunks, single=False, duration_s=duration, estimated_cost=cost(duration))


def _probe_or_none(source) -> float | None:
    try:
        return audio_prep.probe(source).duration_s
    except audio_prep.AudioPrepError:
        return None  # let the API say what is wrong with it


def _ext(name: str) -> str:
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _merge(parts: list[tuple[Unit, StatusResponse | TranscribeResponse]]) -> StatusResponse | TranscribeResponse:
    """One answer from the answers of a file's chunks (a single answer passes through)."""
    if len(parts) == 1:
        return parts[0][1]
    stitched_parts = []
    segments: list[Segment] = []
    cost = 0.0
    minutes = 0.0
    language = None
    for unit, answer in parts:
        chunk = audio_prep.Chunk(unit.index, unit.offset_s, unit.end_s or unit.offset_s, b"")
        words = [audio_prep.TimedWord(w.text, w.start, w.end, w.type, w.speaker_id)
                 for w in (getattr(answer, "words", None) or [])]
        stitched_parts.append((chunk, answer.transcription or "", words))
        for s in (answer.diarization.segments if getattr(answer, "diarization", None) else None) or []:
            segments.append(Segment(speaker=f"c{unit.index}:{s.speaker}", text=s.text,
                                    start=s.start + unit.offset_s, end=s.end + unit.offset_s))
        if answer.metadata is not None:
            cost += answer.metadata.cost or 0.0
            minutes += answer.metadata.actualDuration or answer.metadata.chargedDuration or 0.0
            language = language or answer.metadata.language
    text, words = audio_prep.stitch(stitched_parts)
    meta = Metadata(model=parts[0][1].metadata.model if parts[0][1].metadata else "", cost=cost,
                    actualDuration=minutes, chargedDuration=minutes, language=language)
    return StatusResponse(
        status="completed", transcription=text, metadata=meta,
        words=[Word(text=w.text, start=w.start, end=w.end, type=w.type, speaker_id=w.speaker) for w in words],
        diarization=Diarization(segments=segments) if segments else None,
    )


def _read_bytes(url: str, storage_options: dict) -> bytes:
    fs, path = filesystem_for(url, storage_options)
    with fs.open(path, "rb") as fh:
        return fh.read()


def _success(f: AudioFile, cfg: BatchConfig, key: str, answer: TranscribeResponse | StatusResponse,
             mode: str = "direct") -> Outcome:
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
        "upload_mode": mode, "file_size": f.size, "speaker_count": speakers, "status": "ok",
        "run_id": cfg.run_id, "transcribed_at": datetime.now(UTC),
    }
    word_columns = {
        "text": [w.text for w in words], "start": [w.start for w in words], "end": [w.end for w in words],
        "type": [w.type for w in words], "speaker": [w.speaker_id for w in words],
    } if words else {}
    segment_rows = [
        {"source": f.url, "fingerprint": f.fingerprint, "model": model, "segment_index": i, "speaker": s.speaker,
         "start": s.start, "end": s.end, "text": s.text}
        for i, s in enumerate(segments)
    ]
    return Outcome(key=key, transcript=transcript, words=word_columns, segments=segment_rows)


def words_table(parts: list[tuple[str, str, str, dict[str, list]]]) -> pa.Table:
    """The words rows of a batch as one Arrow table.

    `parts`: (source, fingerprint, model, per-word columns) per file. Built column-wise,
    and the three per-file columns as dictionary arrays cast to strings: a million words
    as dicts cost more to convert than Parquet costs to write them (bench/parquet_write.py).
    """
    schema = tables.WORDS
    if not parts:
        return schema.empty_table()
    counts = np.fromiter((len(p[3]["text"]) for p in parts), dtype=np.int64, count=len(parts))
    run_index = pa.array(np.repeat(np.arange(len(parts), dtype=np.int32), counts))

    def per_file(i: int) -> pa.Array:
        return pa.DictionaryArray.from_arrays(run_index, pa.array([p[i] for p in parts], pa.string())).cast(pa.string())

    word_index = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
    columns = {"source": per_file(0), "fingerprint": per_file(1), "model": per_file(2),
               "word_index": pa.array(word_index, pa.int32())}
    for name in ("text", "start", "end", "type", "speaker"):
        values: list = []
        for p in parts:
            values.extend(p[3][name])
        columns[name] = pa.array(values, schema.field(name).type)
    return pa.Table.from_pydict(columns, schema=schema)


def _failure(f: AudioFile, cfg: BatchConfig, key: str, exc: errors.STTError, *, attempts: int,
             kind: str | None = None, keep_ledger: bool = False) -> Outcome:
    row: dict[str, Any] = {
        "source": f.url, "fingerprint": f.fingerprint, "request_key": key, "model": cfg.options.model,
        "error_kind": kind or exc.kind, "error_type": type(exc).__name__.rstrip("_"),
        "status_code": exc.status_code, "message": exc.message, "attempts": attempts,
        "run_id": cfg.run_id, "failed_at": datetime.now(UTC),
    }
    return Outcome(key=key, failure=row, keep_ledger=keep_ledger)
