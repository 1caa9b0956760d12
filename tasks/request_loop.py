"""One event loop, one connection pool and one set of request slots for a run's batches.

With the thread runner each batch task used to run its own event loop (`asyncio.run`) with
its own client: every batch opened its connections again, and two or three loops polled
the same sockets' worth of work on a 2-core machine. Instead, the run starts one
`RequestLoop`: a thread with an event loop, one `STTClient` whose pool holds
`concurrency x parallel_batches` connections, and a semaphore of as many request slots.
Each batch task sends its files on it (`run`) and waits, then writes its parts in its own
thread. A slot is held only around a request (and the polling of its job), never around
file reads, ledger writes or a retry's back-off; one batch task more than
`parallel_batches` runs, so while a batch prepares its files or finishes its parts its
neighbours use the slots: the API sees the same number of requests in flight from the
first file to the last.

Dask and Ray run batches in other processes: there each batch has its own loop, client
and `concurrency` slots, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from stt.client import RateLimiter, STTClient
from tasks.endpoint import Endpoint

T = TypeVar("T")


class RequestLoop:
    def __init__(self, endpoint: Endpoint, slots: int, rate_limiter: RateLimiter | None = None) -> None:
        self.size = max(1, slots)
        self.slots = asyncio.Semaphore(self.size)
        self.client: STTClient = endpoint.client(max_connections=self.size, rate_limiter=rate_limiter)
        self._loop = asyncio.new_event_loop()
        # Blocking steps (file reads, claims, ledger writes) of every batch go through this
        # loop's executor: enough threads for the files under way of all batches.
        self._loop.set_default_executor(ThreadPoolExecutor(max_workers=4 * self.size,
                                                           thread_name_prefix="bulkscribe-io"))
        # The loop runs in the flow's context (its Prefect settings: the API URL of the run).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop.run_forever,),
                                        name="bulkscribe-requests", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it (from a batch task's thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Cancel what still runs on the loop (an interrupted run: the batch threads waiting
        in `run` get CancelledError instead of waiting for ever), close the client, stop."""
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
        except Exception:  # noqa: BLE001 - the run is ending; its connections go with the loop
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _shutdown(self) -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.client.aclose()

    def __enter__(self) -> RequestLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
