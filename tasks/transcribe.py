"""Transcribe a batch of files: the unit of work of one Prefect task.

A batch (tens to hundreds of files) is one task run, with requests in flight
concurrently inside it: Prefect costs ~10 ms per task run and slows down past a few
thousand task runs per flow run, so one task per file would not scale to an archive.

Retries happen here, per file, not as Prefect task retries: a retry of the task would
re-send the whole batch, and Prefect's `retry_jitter_factor` does nothing for tasks.
Only transient errors are retried (exponential backoff, full jitter, at least the
server's Retry-After); a permanent error becomes a failure row at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
from prefect import task
from prefect.cache_policies import NONE
from pydantic import SecretStr

from stt import errors
from stt.client import STTClient
from stt.contract import AsyncJob, StatusResponse, TranscribeResponse
from tasks import tables
from tasks.sources import AudioFile


@dataclass(frozen=True)
class Endpoint:
    url: str
    api_key: SecretStr
    timeout_s: float = 1800.0

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
    concurrency: int = 4
    max_direct_upload_bytes: int = 3 * 1024 * 1024
    storage_options: dict = field(default_factory=dict)


@dataclass
class BatchResult:
    transcribed: int = 0
    failed: int = 0
    audio_s: float = 0.0
    cost: float = 0.0
    failures: list[str] = field(default_factory=list)  # "source: message", for the summary


@task(name="transcribe_batch", cache_policy=NONE, persist_result=False)
def transcribe_batch(files: list[AudioFile], cfg: BatchConfig, batch_no: int) -> BatchResult:
    """Transcribe `files`, write their rows as one part per table, return the counts."""
    rows = asyncio.run(_run_batch(files, cfg))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    part = f"part-{stamp}-{cfg.run_id[:8]}-{batch_no:05d}"
    result = BatchResult()
    for table in ("transcripts", "failures"):
        tables.write_part(cfg.out, table, [r for t, r in rows if t == table], part_name=part,
                          storage_options=cfg.storage_options)
    for t, r in rows:
        if t == "transcripts":
            result.transcribed += 1
            result.audio_s += r["duration_s"] or 0.0
            result.cost += r["cost"] or 0.0
        else:
            result.failed += 1
            result.failures.append(f"{r['source']}: {r['message']}")
    return result


async def _run_batch(files: list[AudioFile], cfg: BatchConfig) -> list[tuple[str, dict]]:
    gate = asyncio.Semaphore(cfg.concurrency)
    async with cfg.endpoint.client(max_connections=cfg.concurrency) as client:

        async def one(f: AudioFile) -> tuple[str, dict]:
            async with gate:
                return await _transcribe_one(client, f, cfg)

        return list(await asyncio.gather(*(one(f) for f in files)))


async def _transcribe_one(client: STTClient, f: AudioFile, cfg: BatchConfig) -> tuple[str, dict]:
    opts = cfg.options
    key = opts.request_key(f.fingerprint)
    if f.size > cfg.max_direct_upload_bytes:
        return "failures", _failure_row(
            f, cfg, key, errors.PayloadTooLarge(
                f"file is {f.size} bytes, over the {cfg.max_direct_upload_bytes}-byte direct-upload limit; "
                "large-file modes (presigned URL, re-encode, chunking) are not available in this version"),
            attempts=0, kind="skipped")
    try:
        data = await asyncio.to_thread(_read_bytes, f.url, cfg.storage_options)
    except OSError as exc:
        return "failures", _failure_row(f, cfg, key, errors.BadRequest(f"could not read the file: {exc}"), attempts=0)

    attempt = 0
    while True:
        attempt += 1
        try:
            answer = await client.transcribe_bytes(
                data, f.name, model=opts.model, language=opts.language, diarize=opts.diarize,
                tag_audio_events=opts.tag_audio_events, idempotency_key=key,
            )
            if isinstance(answer, AsyncJob):
                answer = await client.wait(answer)
            return "transcripts", _transcript_row(f, cfg, key, answer)
        except errors.TransientError as exc:
            if attempt >= cfg.retry.max_attempts:
                return "failures", _failure_row(f, cfg, key, exc, attempts=attempt)
            await asyncio.sleep(cfg.retry.delay(attempt - 1, exc.retry_after))
        except errors.PermanentError as exc:
            return "failures", _failure_row(f, cfg, key, exc, attempts=attempt)


def _read_bytes(url: str, storage_options: dict) -> bytes:
    with fsspec.open(url, "rb", **(storage_options or {})) as fh:
        return fh.read()


def _transcript_row(f: AudioFile, cfg: BatchConfig, key: str, answer: TranscribeResponse | StatusResponse) -> dict:
    meta = answer.metadata
    minutes = None
    if meta is not None:
        minutes = meta.actualDuration if meta.actualDuration is not None else meta.chargedDuration
    speakers = None
    if getattr(answer, "diarization", None) and answer.diarization.segments:
        speakers = len({s.speaker for s in answer.diarization.segments})
    return {
        "source": f.url, "fingerprint": f.fingerprint, "request_key": key, "model": cfg.options.model,
        "language": (meta.language if meta else None) or cfg.options.language,
        "options": cfg.options.as_json(), "text": answer.transcription or "",
        "duration_s": round(minutes * 60.0, 3) if minutes is not None else None,
        "cost": meta.cost if meta else None, "currency": meta.currency if meta else None,
        "upload_mode": "direct", "file_size": f.size, "speaker_count": speakers, "status": "ok",
        "run_id": cfg.run_id, "transcribed_at": datetime.now(UTC),
    }


def _failure_row(f: AudioFile, cfg: BatchConfig, key: str, exc: errors.STTError, *, attempts: int,
                 kind: str | None = None) -> dict[str, Any]:
    return {
        "source": f.url, "fingerprint": f.fingerprint, "request_key": key, "model": cfg.options.model,
        "error_kind": kind or exc.kind, "error_type": type(exc).__name__.rstrip("_"),
        "status_code": exc.status_code, "message": exc.message, "attempts": attempts,
        "run_id": cfg.run_id, "failed_at": datetime.now(UTC),
    }
