"""Backfill an archive on a work pool: one child flow run per shard, any number of workers.

The backfill splits its window into shards (`flows.shards`), starts one run of the
`transcribe_archive` shard deployment per shard with `run_deployment(..., timeout=0)`
and an idempotency key per shard, waits for them all and reports the total. Any number
of `prefect worker start --pool bulkscribe` processes, on any machines that reach the
Prefect API, take the shard runs; each worker reads its own environment (key, API URL,
model, storage credentials) like the CLI does.

Re-running the same backfill (same parameters) finds each shard's run by its key: a
finished shard is counted, not run again; a failed, crashed or cancelled one gets a new
attempt (key suffix `:1`, `:2`...). A shard whose run still says Running but whose
process is gone (its lease in OUT/_ledger/_runs is stale, or its pid is gone on this
machine: a killed worker), or that a worker took (Pending) and never started within
`pending_grace_s`, is marked Crashed and retried the same way; so is one that turns Crashed
while the backfill waits (two backfills of the same shards: the other one marked it, and
both follow the same next attempt). Files are never
paid twice across attempts: the claims in OUT (tasks.claims) make a second run leave a
file alone while a live run holds it, and take it over once that run is dead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Crashed

from flows.artifacts import (
    SUMMARY_DESCRIPTION,
    SUMMARY_FIELDS,
    publish_summary,
    read_summary,
    redact,
    run_artifacts,
)
from flows.errors import RunAborted
from flows.preflight import check_storage
from flows.shards import ShardBy, ShardPlanError, plan_shards, shard_key
from flows.transcribe_archive import load_settings
from tasks.claims import STALE_AFTER_S, Claims, Owner

#: The deployment the shards run as (prefect.yaml, deployments/serve.py).
SHARD_DEPLOYMENT = "transcribe_archive/shard"
#: A shard run that says Running with no lease yet is given this long to write it (it does so
#: first thing, before reading OUT or starting a server).
START_GRACE_S = 60.0
#: A Running shard without a lease must stay so this long to count as dead.
MISSING_GRACE_S = 30.0
#: A shard run a worker took (Pending) but never started: that worker died while starting it.
PENDING_GRACE_S = 90.0
_MAX_ATTEMPTS = 20


@dataclass
class Shard:
    index: int
    params: dict[str, Any]
    key: str
    attempt: int = 0
    run: FlowRun | None = None
    totals: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.run is not None and self.run.state is not None and self.run.state.is_final()

    @property
    def completed(self) -> bool:
        return self.run is not None and self.run.state is not None and self.run.state.is_completed()


@flow(name="bulkscribe_backfill")
def backfill(source: str, out: str, shards: int = 4, modified_since: datetime | None = None,
             modified_before: datetime | None = None, prefixes: list[str] | None = None,
             shard_by: ShardBy = "hash", model: str | None = None, language: str | None = None,
             include: list[str] | None = None, exclude: list[str] | None = None,
             settings: dict[str, Any] | None = None, config: str | None = None,
             deployment: str = SHARD_DEPLOYMENT, poll_s: float = 5.0,
             pending_grace_s: float = PENDING_GRACE_S) -> dict[str, float]:
    """Transcribe SOURCE's window in `shards` child runs on the work pool; the total of all shards.
    A budget (settings or environment) is split evenly over the shards. Ends Failed when a shard
    did not complete: re-run the same backfill to retry those alone."""
    run_settings = load_settings(config, settings, model=model, language=language)
    common = {k: v for k, v in {"model": model, "language": language, "include": include, "exclude": exclude,
                                "settings": settings, "config": config}.items() if v}
    try:
        plans = plan_shards(source, out, shards, shard_by, modified_since, modified_before, prefixes, common)
    except ShardPlanError as exc:
        raise RunAborted(str(exc)) from None
    if run_settings.budget_usd is not None:  # the backfill's budget, split: shards do not add theirs up
        share = {"budget_usd": run_settings.budget_usd / len(plans)}
        plans = [{**p, "settings": {**(p.get("settings") or {}), **share}} for p in plans]
    check_storage(source, out, run_settings)
    work = [Shard(i, p, shard_key(deployment, p)) for i, p in enumerate(plans)]
    liveness = Liveness(Claims(out, Owner.this_process("backfill"), run_settings.storage_options), pending_grace_s)
    for shard in work:
        _start(shard, deployment, liveness)
    _wait(work, deployment, liveness, poll_s)
    return _report(work, f"{source} -> {out}")


def _start(shard: Shard, deployment: str, liveness: Liveness) -> None:
    """The shard's current attempt: an earlier one that finished or still lives, else a new one."""
    logger = get_run_logger()
    while shard.attempt < _MAX_ATTEMPTS:
        run = run_deployment(deployment, parameters=shard.params, timeout=0,
                             idempotency_key=f"{shard.key}:{shard.attempt}")
        assert isinstance(run, FlowRun)
        shard.run = run
        state = run.state
        if liveness.dead(run):
            _mark_crashed(run.id)
        elif state is None or state.is_completed() or not state.is_final():
            logger.info("shard %d: run %s (attempt %d, %s)", shard.index, run.name, shard.attempt,
                        state.name if state else "new")
            return
        shard.attempt += 1
    raise RunAborted(f"shard {shard.index} failed {_MAX_ATTEMPTS} times; see its flow runs")


def _wait(work: list[Shard], deployment: str, liveness: Liveness, poll_s: float) -> None:
    """Until every shard's run is final; a run whose process died is crashed and retried once more."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not all(s.final for s in work):
            time.sleep(poll_s)
            for shard in work:
                if shard.final or shard.run is None:
                    continue
                shard.run = client.read_flow_run(shard.run.id)
                # Crashed: marked so by another backfill of the same shards (a re-run while
                # this one still waits), which starts the next attempt: follow it, as `_start` does.
                crashed = shard.run.state is not None and shard.run.state.is_crashed()
                if crashed or liveness.dead(shard.run):
                    get_run_logger().warning("shard %d: run %s lost its process; retrying it", shard.index,
                                             shard.run.name)
                    if not crashed:
                        _mark_crashed(shard.run.id)
                    shard.attempt += 1
                    _start(shard, deployment, liveness)


@dataclass
class Liveness:
    """Whether a shard run that says Pending or Running still has a process behind it."""

    claims: Claims
    pending_grace_s: float = PENDING_GRACE_S
    #: When each Running shard was first seen without a lease (a run removes its lease as it
    #: ends, a moment before it says Completed: one look is not enough).
    missing_since: dict[str, float] = field(default_factory=dict)

    def dead(self, run: FlowRun) -> bool:
        state = run.state
        if state is None:
            return False
        if state.is_pending():  # a worker took it; it should be Running within seconds
            return time.time() - state.timestamp.timestamp() > self.pending_grace_s
        return state.is_running() and not self._running(run)

    def _running(self, run: FlowRun) -> bool:
        """Its lease in OUT is fresh and its pid is there (where this machine can tell)."""
        lease = self.claims.lease(str(run.id))
        if lease is None:
            now = time.time()
            missing = now - self.missing_since.setdefault(str(run.id), now)
            started = run.start_time or run.expected_start_time
            return missing < MISSING_GRACE_S or started is None or now - started.timestamp() < START_GRACE_S
        self.missing_since.pop(str(run.id), None)
        owner = Owner(str(run.id), str(lease.get("host", "")), int(lease.get("pid", 0)),
                      str(lease.get("pid_start", "")))
        return not owner.gone() and time.time() - float(lease.get("alive", 0)) < STALE_AFTER_S


def _mark_crashed(run_id: UUID) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Crashed(message="the shard's process is gone (stale lease)"), force=True)


def _shard_totals(run_id: UUID) -> dict[str, float]:
    """A finished shard's summary, read back from its table artifact."""
    for artifact in run_artifacts(run_id, "table"):
        if (artifact.description or "").startswith(SUMMARY_DESCRIPTION):
            return read_summary(artifact.data)
    return {k: 0.0 for k in SUMMARY_FIELDS}


def _report(work: list[Shard], title: str) -> dict[str, float]:
    logger = get_run_logger()
    total = {k: 0.0 for k in SUMMARY_FIELDS}
    failed = []
    for shard in work:
        assert shard.run is not None
        shard.totals = _shard_totals(shard.run.id)
        for k, v in shard.totals.items():
            total[k] += v
        if not shard.completed:
            failed.append(shard)
        logger.info("shard %d: %s, %d transcribed, %d failed", shard.index,
                    shard.run.state.name if shard.run.state else "?", shard.totals["transcribed"],
                    shard.totals["failed"])
    publish_summary({**total, "shards": len(work)}, f"backfill {title}")
    if failed:
        raise RunAborted(redact(f"{len(failed)} of {len(work)} shard(s) did not complete "
                                f"({', '.join(str(s.index) for s in failed)}); re-run the same backfill to retry "
                                "them alone"))
    return total
