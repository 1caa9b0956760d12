"""Request slots: at most N requests in flight, whichever batch (thread, event loop) sends them.

With the thread runner a run's batches share one `Slots` of `concurrency x parallel_batches`
and one batch more than that runs: while a batch prepares its files (plan, content hash,
claim) or finishes (answers recorded, parts written, ledger settled) its neighbours use
the slots it does not need, so the API sees the same number of requests in flight from
the first file to the last instead of dips at every batch's start and end. A slot is
held only around a request (and the polling of its job), never around file reads, ledger
writes or a retry's back-off. On Dask and Ray each batch has its own `Slots` of `concurrency`.

`asyncio.Semaphore` cannot do this: it belongs to one event loop, and each batch task runs
its own. Waiters are woken in order, on their own loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from types import TracebackType


class Slots:
    def __init__(self, n: int) -> None:
        self.size = max(1, n)
        self._free = self.size
        self._lock = threading.Lock()
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = (
            collections.deque())

    async def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter = (asyncio.get_running_loop(), asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            with self._lock:
                handed = waiter not in self._waiters  # the slot was handed over meanwhile: pass it on
                if not handed:
                    self._waiters.remove(waiter)
            if handed:
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.popleft()
                if loop is _running_loop():
                    loop.call_soon(_grant, future)  # same loop: no wake-up through its self-pipe
                    return
                try:
                    loop.call_soon_threadsafe(_grant, future)
                    return
                except RuntimeError:  # that loop is closed: its batch has ended
                    continue
            self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
