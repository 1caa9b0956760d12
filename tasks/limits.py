"""Request-rate limits shared by every run and worker, through Prefect.

The hosted API allows 25 requests per second per key, however many runs and machines
use the key. A `RateLimiter` in one process only sees its own run; with a Prefect server
configured (PREFECT_API_URL), the limit is a Prefect global concurrency limit in rate
mode instead: each request occupies one slot, slots decay at `requests_per_second`, and
the limit (the burst) is what the hosted limit leaves above that rate. In any one-second
window the whole fleet then sends at most `requests_per_second + burst` requests
(20 + 5 = 25 by default). When the Prefect server cannot be used (not configured, not
reachable, the limit deleted), the run falls back to its own in-process limiter and
says so once in the log.

Both limiters pickle (a Dask or Ray task receives its own copy): the lock and the
schedule are rebuilt on arrival. A fallback limiter on a distributed runner limits each
worker process on its own; the shared limit is the one that holds for a fleet.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from stt.client import RateLimiter

log = logging.getLogger("bulkscribe.tasks")

#: Requests per second per key that the hosted API allows.
HOSTED_LIMIT_PER_S = 25.0


def burst_for(per_second: float) -> int:
    """Slots of the shared limit: what the hosted limit leaves above the sustained rate."""
    return max(1, min(int(per_second), int(HOSTED_LIMIT_PER_S - per_second)))


class LocalRateLimiter(RateLimiter):
    """`stt.client.RateLimiter` that survives pickling (a fresh schedule on arrival)."""

    def __init__(self, per_second: float) -> None:
        super().__init__(per_second)
        self.per_second = per_second

    def __getstate__(self) -> dict[str, Any]:
        return {"per_second": self.per_second}

    def __setstate__(self, state: dict[str, Any]) -> None:
        LocalRateLimiter.__init__(self, state["per_second"])


class SharedRateLimiter(LocalRateLimiter):
    """One slot of the Prefect global concurrency limit `name` per request."""

    def __init__(self, name: str, per_second: float) -> None:
        super().__init__(per_second)
        self.name = name
        self._fallback = False
        self._warn_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"per_second": self.per_second, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        SharedRateLimiter.__init__(self, state["name"], state["per_second"])

    @property
    def shared(self) -> bool:
        """False once the run fell back to limiting itself."""
        return not self._fallback

    async def acquire(self) -> None:
        if not self._fallback:
            from prefect.concurrency.asyncio import rate_limit

            try:
                await rate_limit(self.name, occupy=1, strict=True)
                return
            except Exception as exc:  # noqa: BLE001 - any failure of the shared limit means: limit locally
                self._fall_back(exc)
        await super().acquire()

    def _fall_back(self, exc: BaseException) -> None:
        with self._warn_lock:
            if not self._fallback:
                self._fallback = True
                log.warning("shared rate limit %r unavailable (%s); limiting this process to %.1f requests/s",
                            self.name, type(exc).__name__, self.per_second)


def prefect_server_configured() -> bool:
    """A Prefect server other runs can see (not the temporary one a lone CLI run starts)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def ensure_shared_limit(name: str, per_second: float) -> None:
    """Create (or align) the global concurrency limit: burst slots decaying at `per_second`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, burst_for(per_second), slot_decay_per_second=per_second)


def request_limiter(per_second: float | None, shared_name: str) -> RateLimiter | None:
    """The limiter of a run's requests: shared through Prefect when possible, else in-process."""
    if not per_second:
        return None
    if shared_name and prefect_server_configured():
        try:
            ensure_shared_limit(shared_name, per_second)
            return SharedRateLimiter(shared_name, per_second)
        except Exception as exc:  # noqa: BLE001 - unreachable server, refused upsert: limit locally
            log.warning("cannot set up the shared rate limit %r (%s); limiting this run on its own",
                        shared_name, type(exc).__name__)
    return LocalRateLimiter(per_second)
