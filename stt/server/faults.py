"""Injected faults, for testing clients against the failures a real API has on bad days.

Off by default. `bulkscribe serve --faults SPEC` or `BULKSCRIBE_SERVER_FAULTS=SPEC`, where
SPEC is comma-separated `name=value` pairs:

    seed=7            the random sequence (default 0): the same seed gives the same faults
    all=0.3           30 % of requests get a fault, spread evenly over the six kinds below
    429=0.05          answer 429 + Retry-After, without processing
    500=0.05          answer 500, without processing
    503=0.05          answer 503 + Retry-After, without processing
    close_before=0.05 close the connection without an answer, without processing
    close_after=0.05  process the request for real (charged, answer recorded for
                      Idempotency-Key replay), then close the connection: the answer is lost
    delay=0.05        wait `delay_s` before processing normally
    delay_s=2         how long a delay lasts (default 1)
    retry_after=1     the Retry-After of 429 and 503 answers, in seconds (default 1)
    on=submit+status  which endpoints get faults (default both): submit (POST /api/transcribe),
                      status (POST /api/transcribe/status), balance (POST /api/check-balance)

Kinds named explicitly override their share of `all`; the rates must add up to 1 at most.

Deterministic per seed: the n-th request to an endpoint gets fault number f(seed,
endpoint, n), whatever the timing, so a sequential client sees the same faults on every
run (concurrent clients see the same sequence, handed out in arrival order).

"Close" is a real closed connection: the status line and headers of an answer go out,
then the connection is closed mid-body, so the client's HTTP library raises a transport
error (it never gets a usable answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("bulkscribe.server.faults")

KINDS = ("429", "500", "503", "close_before", "close_after", "delay")
ENDPOINTS = {"/api/transcribe": "submit", "/api/transcribe/status": "status", "/api/check-balance": "balance"}


@dataclass
class FaultPlan:
    rates: dict[str, float]
    seed: str = "0"
    endpoints: frozenset[str] = frozenset({"submit", "status"})
    delay_s: float = 1.0
    retry_after_s: int = 1
    _counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> FaultPlan | None:
        """The plan SPEC describes; None for an empty SPEC. ValueError says what is wrong."""
        pairs = [p.strip() for p in spec.split(",") if p.strip()]
        if not pairs:
            return None
        values: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name.strip() not in (*KINDS, "all", "seed", "delay_s", "retry_after", "on"):
                raise ValueError(f"bad fault setting {pair!r}: expected name=value, names: "
                                 f"seed, all, {', '.join(KINDS)}, delay_s, retry_after, on")
            values[name.strip()] = value.strip()
        share = float(values.get("all", 0)) / len(KINDS)
        rates = {k: float(values.get(k, share)) for k in KINDS}
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and add up to 1 at most, got {rates}")
        endpoints = frozenset(values.get("on", "submit+status").split("+"))
        if not endpoints <= set(ENDPOINTS.values()):
            raise ValueError(f"on= takes endpoints joined by '+': {', '.join(ENDPOINTS.values())}")
        return cls(rates, values.get("seed", "0"), endpoints, float(values.get("delay_s", 1.0)),
                   int(values.get("retry_after", 1)))

    def next_fault(self, endpoint: str) -> str | None:
        """The fault for the next request to `endpoint` (None: serve it normally)."""
        n = self._counts.get(endpoint, 0)
        self._counts[endpoint] = n + 1
        digest = hashlib.sha256(f"{self.seed}:{endpoint}:{n}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        for kind in KINDS:
            u -= self.rates[kind]
            if u < 0:
                return kind
        return None


class FaultInjector:
    """ASGI middleware applying a FaultPlan to the endpoints it names."""

    def __init__(self, app: ASGIApp, plan: FaultPlan) -> None:
        self.app = app
        self.plan = plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope.get("path", "")) if scope["type"] == "http" else None
        fault = self.plan.next_fault(endpoint) if endpoint in self.plan.endpoints else None
        if fault is None:
            await self.app(scope, receive, send)
            return
        log.info("injected fault on %s: %s", endpoint, fault)
        if fault == "delay":
            await asyncio.sleep(self.plan.delay_s)
            await self.app(scope, receive, send)
        elif fault == "close_after":
            try:
                await self.app(scope, receive, _discard)
            except Exception:  # noqa: BLE001 - an error answer is lost like any other
                log.info("the request behind an injected close_after failed; its answer is lost")
            await _close(send)
        elif fault == "close_before":
            await _close(send)
        else:
            await _error(send, int(fault), self.plan.retry_after_s)


async def _discard(message: Message) -> None:
    """The answer is produced (and paid for), and lost."""


async def _close(send: Send) -> None:
    # Headers that promise a body, then no body: the server closes the connection when the
    # app returns with the answer incomplete, and the client sees a transport error.
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")]})


async def _error(send: Send, status: int, retry_after_s: int) -> None:
    message = {429: "rate limit exceeded", 500: "internal error", 503: "server busy, retry later"}[status]
    body = json.dumps({"error": status, "message": f"{message} (injected fault)"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
