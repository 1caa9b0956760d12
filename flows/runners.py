"""Where batch tasks run: threads of the flow process (default), a Dask cluster or Ray.

Chosen per run from the settings (`task_runner`, `task_runner_address`,
`task_runner_workers`), not fixed on the flow, so a deployment's workers pick it from
their own environment (BULKSCRIBE_TASK_RUNNER=dask) like any other setting.

On Dask and Ray every task argument is pickled and each task gets its own copy of it;
a `Budget` shared by reference would no longer be shared. The flow process stays the
budget authority instead (`BudgetShares`): each batch leaves with an allowance carved
from what remains, and what it spent is settled back when it returns.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from config.settings import Settings
from flows.errors import RunAborted
from tasks.batch import BatchResult
from tasks.budget import Budget

ALLOWANCE = "allowance"


def task_runner_for(settings: Settings) -> TaskRunner[Any]:
    """A fresh (not yet started) task runner for one run's batches."""
    if settings.task_runner == "dask":
        return _dask(settings)
    if settings.task_runner == "ray":
        return _ray(settings)
    # One thread more than parallel_batches: the batch that prepares or finishes while the
    # others hold the run's request slots (tasks.request_loop).
    return InterruptibleThreadPoolTaskRunner(max_workers=settings.parallel_batches + 1)


class InterruptibleThreadPoolTaskRunner(ThreadPoolTaskRunner):  # type: ignore[type-arg]
    """Prefect's thread pool, except that a run ended by an exception (SIGTERM, Ctrl-C) does
    not wait for the batches in flight: their requests may take minutes, and what they
    sent is in OUT's ledger for the next run."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is not None and self._executor is not None:
            # Before Prefect's own exit: its cancel_all() shuts the pool down with wait=True.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, traceback)


def distributed(settings: Settings) -> bool:
    return settings.task_runner != "threads"


def _dask(settings: Settings) -> TaskRunner[Any]:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RunAborted("task_runner=dask needs the dask extra: pip install 'bulkscribe[dask]'") from None
    if settings.task_runner_address:
        return DaskTaskRunner(address=settings.task_runner_address)  # type: ignore[no-any-return]
    # Worker processes (not threads): the batch tasks hold the GIL while they build tables.
    return DaskTaskRunner(cluster_kwargs={  # type: ignore[no-any-return]
        "n_workers": settings.task_runner_workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": None, "host": "127.0.0.1",
    })


def _ray(settings: Settings) -> TaskRunner[Any]:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise RunAborted("task_runner=ray needs the ray extra: pip install 'bulkscribe[ray]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray would otherwise report usage
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if not settings.task_runner_address:
        init["num_cpus"] = settings.task_runner_workers
    return RayTaskRunner(address=settings.task_runner_address, init_kwargs=init)  # type: ignore[no-any-return]


class BudgetShares:
    """The run's budget as seen from its batches.

    With threads every batch holds the one `Budget` (exact: a file reserves against the
    run's cap). On a distributed runner each batch gets its own `Budget` whose cap is an
    allowance: an equal share of what remains among the batches that may be in flight.
    A batch that exhausts its allowance stops sending (its other files are "not sent",
    picked up by the next run); the run goes on while the budget has room.
    """

    def __init__(self, budget: Budget, *, shared: bool, parallel: int) -> None:
        self.budget, self.shared, self.parallel = budget, shared, max(1, parallel)
        self._granted: dict[int, Budget] = {}

    def grant(self, batch_no: int) -> Budget:
        if self.shared:
            return self.budget
        allowance = Budget(max(0.0, self.budget.remaining()) / self.parallel, ALLOWANCE)
        self.budget.reserve(allowance.cap)
        self._granted[batch_no] = allowance
        return allowance

    def settle(self, batch_no: int, result: BatchResult) -> None:
        """Give back what the batch did not spend; its allowance running out is not the run's stop."""
        allowance = self._granted.pop(batch_no, None)
        if allowance is None:
            return
        self.budget.settle(allowance.cap, result.cost)
        if result.stop_reason and result.stop_reason.startswith(ALLOWANCE):
            result.stop_reason = None

    def exhausted(self) -> bool:
        return not self.shared and self.budget.remaining() <= 0.0
