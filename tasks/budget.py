"""The money a run may spend: a cap (the --budget, or the balance) and what is reserved against it."""

from __future__ import annotations

import threading
from typing import Any


class Budget:
    """Estimated spend of a run so far, against a cap.

    A file reserves its estimate before it is sent and settles to what the API charged.
    The first refusal closes the budget: no file reserves after it, even a smaller one, so
    a budget that covers N files sends those N and the refusal says why the rest were not
    sent; files that reserved before it are sent. Shared by the batches of a run, which
    run in worker threads: hence the lock (recreated when the budget is unpickled).
    """

    def __init__(self, cap_usd: float, what: str = "budget") -> None:
        self.cap, self.what = cap_usd, what
        self.spent = 0.0
        self.refusal: str | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def remaining(self) -> float:
        with self._lock:
            return self.cap - self.spent

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Replace a reservation by what the API actually charged."""
        with self._lock:
            self.spent += actual_usd - reserved_usd

    def reserve(self, estimate_usd: float) -> bool:
        """Count the file in; False (and `refusal` says why) once the cap would be passed."""
        with self._lock:
            if self.refusal is None and self.spent + estimate_usd > self.cap + 1e-12:
                self.refusal = (f"{self.what} reached: {self.spent:.4f} USD estimated so far, the next file "
                                f"would add {estimate_usd:.4f} USD over the {self.cap:.4f} USD cap")
            if self.refusal is not None:
                return False
            self.spent += estimate_usd
            return True
