"""Request slots shared by the batches of a run: each batch task runs its own event loop in
its own thread, and together they never have more requests in flight than the slots."""

from __future__ import annotations

import asyncio
import threading

from tasks.slots import Slots


def _batch(slots: Slots, n: int, state: dict, lock: threading.Lock) -> None:
    async def one() -> None:
        async with slots:
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            await asyncio.sleep(0.002)
            with lock:
                state["now"] -= 1
                state["done"] += 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(main())


def test_slots_bound_requests_across_threads_and_event_loops():
    slots, lock = Slots(3), threading.Lock()
    state = {"now": 0, "peak": 0, "done": 0}
    threads = [threading.Thread(target=_batch, args=(slots, 40, state, lock)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert state["done"] == 160
    assert state["peak"] == 3  # all three used, never a fourth


def test_a_cancelled_waiter_gives_its_slot_on():
    async def main() -> bool:
        slots = Slots(1)
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        slots.release()  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs: the slot must not be lost
        try:
            await waiter
        except asyncio.CancelledError:
            pass
        await asyncio.wait_for(slots.acquire(), timeout=5)
        return True

    assert asyncio.run(main())
