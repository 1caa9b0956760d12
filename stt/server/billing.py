"""What a request costs and what its answer says about the cost.

Prices are per audio minute, per model; amounts are integer micro-USD (see `store`). The
metadata block of an answer is built here only, for synchronous answers and completed
jobs alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from stt.contract import Metadata
from stt.server.errors import APIError
from stt.server.store import MICRO, InsufficientBalance


@dataclass(frozen=True)
class Bill:
    """One request's charge: what was transcribed, how long it was, what it cost."""

    model: str
    duration_s: float
    cost_micro: int
    file_name: str | None
    file_size: int | None

    @property
    def minutes(self) -> float:
        return round(self.duration_s / 60.0, 6)

    def metadata(self, language: str | None, weights: str) -> dict[str, object]:
        return Metadata(
            fileName=self.file_name, fileSize=self.file_size, chargedDuration=self.minutes,
            actualDuration=self.minutes, language=language, cost=self.cost_micro / MICRO, currency="USD",
            model=self.model, weights=weights,
        ).model_dump(exclude_none=True)


class Pricing:
    def __init__(self, usd_per_min: Mapping[str, float]) -> None:
        self.usd_per_min = dict(usd_per_min)

    def bill(self, model: str, duration_s: float, file_name: str | None, file_size: int | None) -> Bill:
        per_min = self.usd_per_min.get(model)
        if per_min is None:
            raise APIError(400, f"no price configured for model {model}")
        cost = math.ceil(per_min * duration_s / 60.0 * MICRO)
        return Bill(model, duration_s, cost, file_name, file_size)


def payment_required(exc: InsufficientBalance) -> APIError:
    return APIError(402, str(exc))


def require_balance(bill: Bill, balance_micro: int) -> None:
    """402 before any work when the balance cannot pay for it."""
    if bill.cost_micro > balance_micro:
        raise payment_required(InsufficientBalance(bill.cost_micro, balance_micro))
