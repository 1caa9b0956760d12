"""The main flow: an audio archive in, Parquet tables out.

discover (streaming) -> skip what OUT already holds for the same fingerprint, model and
options -> batches of files -> one `transcribe_batch` task per batch (a bounded window of
batches in flight, so memory stays flat however large the archive) -> summary.

Without an API URL the flow starts the embedded server on a free loopback port with a
fresh random key and stops it at the end; with one, it uses the key from the settings
(NANOGPT_API_KEY), which never reaches a log line, a Prefect parameter or a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from pydantic import SecretStr

from config.settings import Settings
from stt import errors
from tasks import tables
from tasks.ledger import Ledger
from tasks.sources import DiscoveryFilter, discover
from stt.client import RateLimiter
from tasks.transcribe import (
    BatchConfig,
    BatchResult,
    Budget,
    Endpoint,
    JobOptions,
    RetryPolicy,
    plan_upload,
    transcribe_batch,
)


class RunAborted(RuntimeError):
    """The run cannot go on (bad key, no money...): nothing more is sent."""


@dataclass
class RunSummary:
    seen: int = 0
    transcribed: int = 0
    skipped: int = 0
    failed: int = 0
    not_sent: int = 0
    audio_minutes: float = 0.0
    estimated_cost: float = 0.0  # dry run: what sending the files would cost
    dry_run: bool = False
    cost: float = 0.0
    run_id: str = ""
    out: str = ""
    failures: list[str] = field(default_factory=list)
    stop_reason: str | None = None

    def add(self, r: BatchResult) -> None:
        self.transcribed += r.transcribed
        self.failed += r.failed
        self.not_sent += r.not_sent
        self.stop_reason = self.stop_reason or r.stop_reason
        self.audio_minutes += r.audio_s / 60.0
        self.cost += r.cost
        self.failures.extend(r.failures)

    def render(self) -> str:
        if self.dry_run:
            return "\n".join([
                f"bulkscribe dry run -> {self.out} (nothing sent)",
                f"  files seen:     {self.seen}",
                f"  would send:     {self.seen - self.skipped - self.failed}",
                f"  skipped:        {self.skipped} (already transcribed with the same model and options)",
                f"  unreadable:     {self.failed}",
                f"  audio minutes:  {self.audio_minutes:.2f}",
                f"  estimated cost: {self.estimated_cost:.6f} USD",
                *[f"  ! {x}" for x in self.failures[:20]],
            ])
        lines = [
            f"bulkscribe run {self.run_id[:8]} -> {self.out}",
            f"  files seen:    {self.seen}",
            f"  transcribed:   {self.transcribed}",
            f"  skipped:       {self.skipped} (already transcribed with the same model and options)",
            f"  failed:        {self.failed}",
            *([f"  not sent:      {self.not_sent} (run stopped: {self.stop_reason})"] if self.stop_reason else []),
            f"  audio minutes: {self.audio_minutes:.2f}",
            f"  cost:          {self.cost:.6f} USD",
        ]
        lines += [f"  ! {f}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ! ... and {len(self.failures) - 20} more (see {self.out}/failures)")
        return "\n".join(lines)


@contextlib.contextmanager
def api_endpoint(settings: Settings) -> Iterator[Endpoint]:
    """The hosted (or any) API when a URL is configured, else the embedded server."""
    if settings.api_url:
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise RunAborted(f"an API URL is set ({settings.api_url}) but no key: set NANOGPT_API_KEY")
        yield Endpoint(settings.api_url, settings.api_key, settings.request_timeout_s,
                       idempotent=settings.api_idempotency_keys)
        return
    from stt.server.launcher import EmbeddedServer

    with EmbeddedServer(env=settings.embedded_server_env) as server:
        yield Endpoint(server.api_url, SecretStr(server.api_key), settings.request_timeout_s, idempotent=True)


def _check_access(endpoint: Endpoint) -> float:
    """Fail fast on a bad key before any file is sent; returns the USD balance."""

    async def check() -> float:
        async with endpoint.client() as client:
            return float((await client.balance()).usd_balance)

    try:
        return asyncio.run(check())
    except errors.Unauthorized as exc:
        raise RunAborted(f"the API rejected the key ({exc.message}); nothing was sent") from None
    except errors.STTError as exc:
        raise RunAborted(f"cannot reach the API at {endpoint.url}: {exc}") from None


# validate_parameters=False: Prefect would otherwise round-trip `settings` through JSON,
# where the SecretStr key is masked and lost. Deployments pass no settings (the worker
# loads them from its environment) and plain overrides only.
@flow(name="transcribe_archive", validate_parameters=False)
def transcribe_archive(source: str, out: str, settings: Settings | None = None,
                       filters: DiscoveryFilter | None = None, parallel_batches: int = 2,
                       model: str | None = None, language: str | None = None, dry_run: bool = False) -> RunSummary:
    settings = settings or Settings()
    overrides = {k: v for k, v in {"model": model, "language": language}.items() if v}
    if overrides:
        settings = settings.model_copy(update=overrides)
    logger = get_run_logger()
    run_id = _run_id()
    options = JobOptions(model=settings.model, language=settings.language, diarize=settings.diarize,
                         tag_audio_events=settings.tag_audio_events)
    summary = RunSummary(run_id=run_id, out=out)
    done = tables.done_request_keys(out, settings.storage_options)
    ledger = Ledger(out, settings.storage_options)
    outstanding = ledger.outstanding()
    stale = [k for k in outstanding if k in done]  # result written, entry not yet cleared
    ledger.clear(stale)
    outstanding = {k: v for k, v in outstanding.items() if k not in done}
    logger.info("%d file(s) already transcribed under %s; %d request(s) outstanding from earlier runs",
                len(done), out, len(outstanding))
    base_cfg = dict(
        out=out, run_id=run_id, options=options,
        retry=RetryPolicy(settings.max_attempts, settings.backoff_base_s, settings.backoff_max_s),
        concurrency=settings.concurrency, max_direct_upload_bytes=settings.max_direct_upload_bytes,
        storage_options=settings.storage_options, outstanding=outstanding, resend_unknown=settings.resend_unknown,
        prices_usd_per_min=settings.prices_usd_per_min, staging_url=settings.staging_url,
        presign_expires_s=settings.presign_expires_s, chunk_seconds=settings.chunk_seconds,
        max_url_bytes=settings.max_url_bytes,
    )
    if dry_run:
        return _dry_run(source, filters, settings, options, done, summary, base_cfg)

    with api_endpoint(settings) as endpoint:
        balance = _check_access(endpoint)
        logger.info("API %s reachable, balance %.4f USD", endpoint.url, balance)
        # The estimate of what is sent may not pass the balance (or the --budget if lower):
        # files past it are not sent, and the run says why.
        if settings.budget_usd is not None and settings.budget_usd <= balance:
            budget = Budget(settings.budget_usd, "budget")
        else:
            budget = Budget(balance, "balance")
        # The requests-per-second cap protects a hosted API's limit; the embedded server has
        # its own admission control (503 + Retry-After) and is not throttled.
        limiter = RateLimiter(settings.requests_per_second) if settings.requests_per_second and settings.api_url \
            else None
        cfg = BatchConfig(endpoint=endpoint, budget=budget, rate_limiter=limiter, **base_cfg)
        in_flight: list[PrefectFuture] = []
        batch: list = []
        batch_no = 0

        def flush() -> None:
            nonlocal batch, batch_no
            if batch:
                in_flight.append(transcribe_batch.submit(batch, cfg, batch_no))
                batch, batch_no = [], batch_no + 1
            while len(in_flight) >= parallel_batches:
                summary.add(in_flight.pop(0).result())

        # The first batch is smaller so that the batches in flight do not all end (and
        # restart, with an idle moment) at once.
        first_size = max(1, settings.batch_size // max(1, parallel_batches))
        for f in discover(source, filters or DiscoveryFilter(), settings.storage_options):
            if summary.stop_reason:
                logger.error("stopping: %s", summary.stop_reason)
                break
            summary.seen += 1
            if options.request_key(f.fingerprint) in done:
                summary.skipped += 1
                continue
            batch.append(f)
            if len(batch) >= (first_size if batch_no == 0 else settings.batch_size):
                flush()
        flush()
        for fut in in_flight:
            summary.add(fut.result())

    logger.info("%s", summary.render())
    return summary


@flow(name="transcribe_archive_backfill")
def backfill(source: str, out: str, modified_since: str | None = None, modified_before: str | None = None,
             model: str | None = None) -> RunSummary:
    """transcribe_archive over a modification-date window (ISO dates, UTC): years of archive
    in slices, each a flow run of its own that a re-run of the same window resumes."""
    return transcribe_archive(source, out, model=model, filters=DiscoveryFilter(
        modified_since=_utc(modified_since), modified_before=_utc(modified_before)))


def _utc(text: str | None):
    from datetime import UTC, datetime

    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _dry_run(source, filters, settings, options, done, summary: RunSummary, base_cfg: dict) -> RunSummary:
    """What a real run would send, how, and what it would cost; sends and writes nothing."""
    summary.dry_run = True
    cfg = BatchConfig(endpoint=Endpoint("", SecretStr("")), **base_cfg)
    print(f"{'mode':<9} {'minutes':>8} {'est. USD':>10}  source")
    for f in discover(source, filters or DiscoveryFilter(), settings.storage_options):
        summary.seen += 1
        key = options.request_key(f.fingerprint)
        if key in done:
            summary.skipped += 1
            continue
        try:
            plan = plan_upload(f, cfg, key, dry_run=True)
        except errors.STTError as exc:
            summary.failed += 1
            summary.failures.append(f"{f.url}: {exc.message}")
            continue
        minutes = (plan.duration_s or 0.0) / 60.0
        summary.audio_minutes += minutes
        summary.estimated_cost += plan.estimated_cost or 0.0
        est = f"{plan.estimated_cost:.6f}" if plan.estimated_cost is not None else "?"
        print(f"{plan.mode:<9} {minutes:>8.2f} {est:>10}  {f.url}")
    return summary


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())
