"""The main flow: an audio archive in, Parquet tables out.

discover (streaming) -> skip what OUT already holds for the same fingerprint, model and
options -> batches of files -> one `transcribe_batch` task per batch (a bounded window of
batches in flight, so memory stays flat however large the archive) -> summary.

Without an API URL the flow starts the embedded server on a free loopback port with a
fresh random key and stops it at the end; with one, it uses the key from the settings
(NANOGPT_API_KEY), which never reaches a log line, a Prefect parameter or a table.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture

from config.settings import Settings
from flows.dry_run import dry_run as plan_dry_run
from flows.endpoint import api_endpoint, check_access
from flows.summary import RunSummary
from stt.client import RateLimiter
from tasks.batch import BatchResult, transcribe_batch
from tasks.batch_config import BatchConfig, job_options
from tasks.budget import Budget
from tasks.discovery import AudioFile, DiscoveryFilter
from tasks.endpoint import Endpoint
from tasks.resume import DiscoveryCounts, ResumeState, pending_files


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
    summary = RunSummary(run_id=_run_id(), out=out)
    state = ResumeState.load(out, settings.storage_options)
    logger.info("%d file(s) already transcribed under %s; %d request(s) outstanding from earlier runs",
                len(state.done), out, len(state.outstanding))
    counts = DiscoveryCounts()
    files = pending_files(source, filters or DiscoveryFilter(), settings.storage_options, job_options(settings),
                          state, counts)
    if dry_run:
        plan_dry_run(files, settings, summary)
    else:
        with api_endpoint(settings) as endpoint:
            cfg = _batch_config(settings, out, summary.run_id, endpoint, state)
            _run_batches(files, cfg, settings.batch_size, parallel_batches, summary)
    summary.seen, summary.skipped = counts.seen, counts.skipped
    logger.info("%s", summary.render())
    return summary


def _batch_config(settings: Settings, out: str, run_id: str, endpoint: Endpoint, state: ResumeState) -> BatchConfig:
    """Check the key, then fix what the run may spend: the balance, or the --budget if lower."""
    balance = check_access(endpoint)
    get_run_logger().info("API %s reachable, balance %.4f USD", endpoint.url, balance)
    if settings.budget_usd is not None and settings.budget_usd <= balance:
        budget = Budget(settings.budget_usd, "budget")
    else:
        budget = Budget(balance, "balance")
    # The requests-per-second cap protects a hosted API's limit; the embedded server has
    # its own admission control (503 + Retry-After) and is not throttled.
    rps = settings.requests_per_second
    limiter = RateLimiter(rps) if rps and settings.api_url else None
    return BatchConfig.from_settings(settings, out=out, run_id=run_id, endpoint=endpoint,
                                     outstanding=state.outstanding, budget=budget, rate_limiter=limiter)


def _run_batches(files: Iterable[AudioFile], cfg: BatchConfig, batch_size: int, parallel: int,
                 summary: RunSummary) -> None:
    """Submit batches as discovery yields files, at most `parallel` in flight; stop
    discovering once a batch says the API will take no more (402, daily limit)."""
    in_flight: list[PrefectFuture[BatchResult]] = []
    batch: list[AudioFile] = []
    batch_no = 0

    def submit() -> None:
        nonlocal batch, batch_no
        in_flight.append(transcribe_batch.submit(batch, cfg, batch_no))
        batch, batch_no = [], batch_no + 1
        while len(in_flight) >= parallel:
            summary.add(in_flight.pop(0).result())

    # The first batch is smaller so that the batches in flight do not all end (and
    # restart, with an idle moment) at once.
    first_size = max(1, batch_size // max(1, parallel))
    for f in files:
        batch.append(f)
        if len(batch) >= (first_size if batch_no == 0 else batch_size):
            submit()
            if summary.stop_reason:
                get_run_logger().error("stopping: %s", summary.stop_reason)
                break
    if batch:
        submit()
    for fut in in_flight:
        summary.add(fut.result())


@flow(name="transcribe_archive_backfill")
def backfill(source: str, out: str, modified_since: datetime | None = None, modified_before: datetime | None = None,
             model: str | None = None) -> RunSummary:
    """transcribe_archive over a modification-date window (naive dates are UTC): years of
    archive in slices, each a flow run of its own that a re-run of the same window resumes."""
    return transcribe_archive(source, out, model=model, filters=DiscoveryFilter(
        modified_since=modified_since, modified_before=modified_before))


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())
