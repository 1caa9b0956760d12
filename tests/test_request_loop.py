"""The run's request loop: batch threads send on one event loop with one set of request slots,
and an interrupted run's close() frees the threads still waiting on it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pydantic import SecretStr

from tasks.endpoint import Endpoint
from tasks.request_loop import RequestLoop

ENDPOINT = Endpoint("http://127.0.0.1:9/api", SecretStr("k"))  # never called in these tests


def test_batches_on_threads_share_the_slots_of_one_loop():
    state = {"now": 0, "peak": 0, "done": 0}
    with RequestLoop(ENDPOINT, 3) as requests:

        async def batch(n: int) -> None:
            async def one() -> None:
                async with requests.slots:
                    state["now"] += 1
                    state["peak"] = max(state["peak"], state["now"])
                    await asyncio.sleep(0.002)
                    state["now"] -= 1
                    state["done"] += 1

            await asyncio.gather(*(one() for _ in range(n)))

        threads = [threading.Thread(target=requests.run, args=(batch(40),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert state["done"] == 160
    assert state["peak"] == 3  # all three slots used, never a fourth


def test_close_cancels_what_runs_and_frees_the_waiting_thread():
    requests = RequestLoop(ENDPOINT, 1)
    outcome: list[str] = []

    def batch() -> None:
        try:
            requests.run(asyncio.sleep(3600))
            outcome.append("finished")
        except BaseException as exc:  # noqa: BLE001 - what the batch thread sees
            outcome.append(type(exc).__name__)

    t = threading.Thread(target=batch)
    t.start()
    time.sleep(0.2)
    requests.close()
    t.join(timeout=30)
    assert not t.is_alive() and outcome == ["CancelledError"]
    late = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        requests.run(late)  # closed for good
    late.close()
