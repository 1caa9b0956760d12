"""The main flow: an audio archive in, Parquet tables out.

discover (streaming) -> skip what OUT already holds for the same fingerprint, model and
options -> batches of files -> one `transcribe_batch` task per batch (a bounded window of
batches in flight, on threads, Dask or Ray, so memory stays flat however large the
archive) -> summary, artifacts.

Every parameter is plain JSON that Prefect validates (a deployment's form, `-p`, a
backfill's child runs): settings come from the config file and the environment of the
process that runs the flow (a worker, the CLI), plus the non-secret `settings`
overrides. Nothing secret is a parameter: Prefect stores parameters in its database.
The CLI hands its already-loaded Settings over in-process (`run_with_settings`).

Without an API URL the flow starts the embedded server on a free loopback port with a
fresh random key and stops it at the end; with one, it uses NANOGPT_API_KEY or the
Prefect Secret block named in the settings.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.utilities.annotations import opaque
from pydantic import ValidationError

from config.files import ConfigError
from config.settings import SECRET_SETTINGS, Settings
from flows.artifacts import ProgressArtifact, publish_failures, publish_summary, redact
from flows.dry_run import dry_run as plan_dry_run
from flows.endpoint import api_endpoint, check_access
from flows.errors import NothingTranscribed, RunAborted
from flows.interrupts import arm_in_flow
from flows.preflight import check_storage, settings_problems
from flows.progress import Progress
from flows.runners import BudgetShares, distributed, task_runner_for
from flows.summary import RunSummary
from tasks.batch import BatchResult, transcribe_batch
from tasks.batch_config import BatchConfig, job_options
from tasks.budget import Budget
from tasks.claims import Owner, RunLease
from tasks.discovery import AudioFile, DiscoveryFilter
from tasks.endpoint import Endpoint
from tasks.limits import request_limiter
from tasks.request_loop import RequestLoop
from tasks.resume import DiscoveryCounts, ResumeState, pending_files

_preloaded: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("bulkscribe_settings", default=None)


@flow(name="transcribe_archive")
def transcribe_archive(source: str, out: str, model: str | None = None, language: str | None = None,
                       include: list[str] | None = None, exclude: list[str] | None = None,
                       modified_since: datetime | None = None, modified_before: datetime | None = None,
                       max_files: int | None = None, shard_index: int = 0, shard_count: int = 1,
                       dry_run: bool = False, config: str | None = None,
                       settings: dict[str, Any] | None = None) -> RunSummary:
    """Transcribe what OUT does not hold yet. `shard_index`/`shard_count`: only the files whose
    stable path hash falls in this shard (see flows.backfill). `settings`: non-secret overrides,
    e.g. {"concurrency": 8}. Ends Failed when files were pending and none could be transcribed."""
    arm_in_flow()
    run_settings = load_settings(config, settings, model=model, language=language)
    filters = DiscoveryFilter(include=tuple(include or ()), exclude=tuple(exclude or ()),
                              modified_since=modified_since, modified_before=modified_before, max_files=max_files)
    keep = shard_filter(shard_index, shard_count)
    check_storage(source, out, run_settings)
    summary = _transcribe(source, out, run_settings, filters, keep, dry_run)
    if summary.nothing_transcribed():
        raise NothingTranscribed(summary)
    return summary


@contextlib.contextmanager
def preloaded(settings: Settings) -> Iterator[None]:
    """Flows called in this block use these Settings (the CLI's, a test's): the key and the
    storage options stay in memory instead of becoming parameters."""
    token = _preloaded.set(settings)
    try:
        yield
    finally:
        _preloaded.reset(token)


def run_with_settings(source: str, out: str, settings: Settings, **params: Any) -> RunSummary:
    """`transcribe_archive` with Settings already loaded in this process."""
    with preloaded(settings):
        return transcribe_archive(source, out, **params)


def load_settings(config: str | None, overrides: dict[str, Any] | None, **flow_overrides: str | None) -> Settings:
    """Preloaded or config file + environment; then the overrides. Bad values end the run with one line each."""
    overrides = {**(overrides or {}), **{k: v for k, v in flow_overrides.items() if v}}
    secret = sorted(SECRET_SETTINGS & set(overrides))
    if secret:
        raise RunAborted(f"{', '.join(secret)} cannot be a parameter (Prefect stores parameters): set it in the "
                         "environment of the worker (NANOGPT_API_KEY, BULKSCRIBE_STORAGE_OPTIONS) or the config file")
    try:
        base = _preloaded.get()
        if base is None:
            return Settings.load(config, **overrides)
        return Settings.model_validate({**base.model_dump(), **overrides}) if overrides else base
    except ValidationError as exc:
        raise RunAborted("; ".join(settings_problems(exc))) from None
    except ConfigError as exc:
        raise RunAborted(str(exc)) from None


def shard_of(url: str, count: int) -> int:
    """A file's shard: a stable hash of its URL (the same on every machine and every re-run)."""
    return int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "big") % count


def shard_filter(index: int, count: int) -> Callable[[AudioFile], bool] | None:
    if count < 1 or not 0 <= index < count:
        raise RunAborted(f"shard_index must be in 0..shard_count-1 and shard_count >= 1 (got {index}/{count})")
    if count == 1:
        return None
    return lambda f: shard_of(f.url, count) == index


def _transcribe(source: str, out: str, settings: Settings, filters: DiscoveryFilter,
                keep: Callable[[AudioFile], bool] | None, dry_run: bool) -> RunSummary:
    summary = RunSummary(run_id=_run_id(), out=out, dry_run=dry_run)
    owner = Owner.this_process(summary.run_id)
    with contextlib.ExitStack() as lease:
        if not dry_run:  # from the start: a backfill tells a live shard from a dead one by its lease
            lease.enter_context(RunLease(out, owner, settings.storage_options))
        _run(source, out, settings, filters, keep, summary, owner)
    return summary


def _run(source: str, out: str, settings: Settings, filters: DiscoveryFilter,
         keep: Callable[[AudioFile], bool] | None, summary: RunSummary, owner: Owner) -> None:
    logger, dry_run = get_run_logger(), summary.dry_run
    state = ResumeState.load(out, job_options(settings), owner, settings.storage_options)
    logger.info("%d file(s) already transcribed under %s; %d request(s) outstanding from earlier runs",
                len(state.done.files), redact(out), state.outstanding)
    counts = DiscoveryCounts()
    progress = Progress(mode="off" if dry_run else settings.progress, interval_s=settings.progress_interval_s,
                        artifact=None if dry_run else ProgressArtifact.start(f"bulkscribe {source} -> {out}"))
    files = _counted(pending_files(source, filters, settings.storage_options, state.done, counts, keep), progress)
    if dry_run:
        plan_dry_run(files, settings, summary)
    else:
        with api_endpoint(settings, source) as endpoint:
            cfg = _batch_config(settings, out, summary.run_id, endpoint, state, owner)
            _run_batches(files, cfg, settings, summary, progress)
    summary.seen = counts.seen
    summary.skipped += counts.skipped
    progress.finish()
    _report(summary, settings, f"{source} -> {out}")


def _counted(files: Iterable[AudioFile], progress: Progress) -> Iterator[AudioFile]:
    for f in files:
        progress.discovered()
        yield f


def _report(summary: RunSummary, settings: Settings, title: str) -> None:
    """The log lines and the artifacts of a finished run (failures with file and reason)."""
    logger = get_run_logger()
    secrets = [settings.api_key.get_secret_value()] if settings.api_key else []
    for source, reason in summary.failed_files[:200]:
        logger.warning("failed: %s: %s", redact(source, secrets), redact(reason, secrets))
    if summary.stop_reason:
        logger.error("stopped: %s", redact(summary.stop_reason, secrets))
    logger.info("%s", redact(summary.render(), secrets))
    if not summary.dry_run:
        publish_summary(summary.values(), title)
        publish_failures(summary.failed_files, secrets)


def _batch_config(settings: Settings, out: str, run_id: str, endpoint: Endpoint, state: ResumeState,
                  owner: Owner) -> BatchConfig:
    """Check the key, then fix what the run may spend: the balance, or the --budget if lower."""
    access = check_access(endpoint)
    balance, endpoint = access.balance, access.endpoint
    get_run_logger().info("API %s reachable, balance %.4f USD, idempotency keys %s", endpoint.url, balance,
                          "honoured" if endpoint.idempotent else "not honoured")
    if settings.budget_usd is not None and settings.budget_usd <= balance:
        budget = Budget(settings.budget_usd, "budget")
    else:
        budget = Budget(balance, "balance")
    # The requests-per-second cap protects a hosted API's limit; the embedded server has
    # its own admission control (503 + Retry-After) and is not throttled.
    limiter = request_limiter(settings.requests_per_second, settings.shared_rate_limit) if settings.api_url else None
    return BatchConfig.from_settings(settings, out=out, run_id=run_id, endpoint=endpoint,
                                     owner=owner, done_contents=state.done.contents, budget=budget,
                                     rate_limiter=limiter)


def _batches(files: Iterable[AudioFile], size: int, parallel: int) -> Iterator[list[AudioFile]]:
    """Batches as discovery yields files, growing from a small first one (doubling up to
    `size`): a small run (a backfill's shard) still fills every parallel slot, and the
    batches in flight do not all end (and restart, with an idle moment) at once."""
    batch: list[AudioFile] = []
    target = max(1, size // (2 * max(1, parallel)))
    for f in files:
        batch.append(f)
        if len(batch) >= target:
            yield batch
            batch, target = [], min(size, target * 2)
    if batch:
        yield batch


def _run_batches(files: Iterable[AudioFile], cfg: BatchConfig, settings: Settings, summary: RunSummary,
                 progress: Progress) -> None:
    """Submit batches as discovery yields files, at most `parallel_batches` sending (on
    threads one more prepares or finishes meanwhile: see tasks.request_loop); stop
    discovering once a batch says the API will take no more (402, daily limit). Whichever
    batch ends first frees its place (waiting on the oldest would leave a finished batch's
    place idle while an older one drains)."""
    parallel = settings.parallel_batches
    shares = BudgetShares(cfg.budget, shared=not distributed(settings), parallel=parallel) if cfg.budget else None
    with contextlib.ExitStack() as stack:
        window = parallel
        if not distributed(settings):  # one loop for the run's requests, one batch more: see tasks.request_loop
            requests = stack.enter_context(RequestLoop(cfg.endpoint, settings.concurrency * parallel, cfg.rate_limiter))
            cfg, window = replace(cfg, requests=requests), parallel + 1
        _submit_batches(files, cfg, settings, summary, progress, shares, window)


def _submit_batches(files: Iterable[AudioFile], cfg: BatchConfig, settings: Settings, summary: RunSummary,
                    progress: Progress, shares: BudgetShares | None, window: int) -> None:
    in_flight: list[tuple[int, PrefectFuture[BatchResult]]] = []

    def collect() -> None:
        done = next(as_completed([future for _, future in in_flight]))
        batch_no, future = in_flight.pop(next(i for i, (_, f) in enumerate(in_flight) if f is done))
        result = future.result()
        if shares is not None:
            shares.settle(batch_no, result)
        summary.add(result)
        progress.batch_done(result)

    with task_runner_for(settings) as runner:
        for batch_no, batch in enumerate(_batches(files, settings.batch_size, settings.parallel_batches)):
            batch_cfg = replace(cfg, budget=shares.grant(batch_no)) if shares is not None else cfg
            in_flight.append((batch_no, runner.submit(transcribe_batch, _parameters(batch, batch_cfg, batch_no,
                                                                                    settings))))
            while len(in_flight) >= window:
                collect()
            if summary.stop_reason or (shares is not None and shares.exhausted()):
                get_run_logger().error("stopping: %s", summary.stop_reason or "budget used up")
                break
        while in_flight:
            collect()


def _parameters(batch: list[AudioFile], cfg: BatchConfig, batch_no: int, settings: Settings) -> dict[str, Any]:
    """A batch task's parameters. On threads they are `opaque`: Prefect would otherwise walk
    every file and every field of the config looking for futures, twice per batch (they
    hold none; ~0.08 ms of CPU per file here). Dask and Ray get them plain: their
    serialization turns the annotation into a bare tuple."""
    if distributed(settings):
        return {"files": batch, "cfg": cfg, "batch_no": batch_no}
    return {"files": opaque(batch), "cfg": opaque(cfg), "batch_no": batch_no}


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())
