"""The default task runner on an interrupted run: it lets go of the batches in flight
instead of waiting for their requests, whenever the interrupt lands."""

from __future__ import annotations

import threading

import pytest

from flows.runners import InterruptibleThreadPoolTaskRunner


class Interrupted(BaseException):
    pass


def test_an_interrupt_before_any_batch_runs_propagates_as_itself():
    """SIGTERM while the first batch is being submitted (CI saw AttributeError here)."""
    with pytest.raises(Interrupted):
        with InterruptibleThreadPoolTaskRunner(max_workers=2):
            raise Interrupted()


def test_an_interrupt_does_not_wait_for_a_batch_in_flight():
    released, order = threading.Event(), []

    def batch() -> None:
        released.wait(60)
        order.append("batch ended")

    try:
        with pytest.raises(Interrupted):
            with InterruptibleThreadPoolTaskRunner(max_workers=2) as runner:
                assert runner._executor is not None
                runner._executor.submit(batch)
                raise Interrupted()
        order.append("runner exited")
        seen = list(order)  # before the batch is released, which then appends its own line
    finally:
        released.set()
    assert seen == ["runner exited"]


def test_a_run_that_ends_normally_waits_for_its_batches():
    order = []

    def batch() -> None:
        threading.Event().wait(0.2)
        order.append("batch ended")

    with InterruptibleThreadPoolTaskRunner(max_workers=2) as runner:
        assert runner._executor is not None
        runner._executor.submit(batch)
    order.append("runner exited")
    assert order == ["batch ended", "runner exited"]
