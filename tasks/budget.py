"""The money a run may spend: a cap (the --budget, or the balance) and what is reserved against it."""

from __future__ import annotations

import threading
from typing import Any


class Budget:
    """Estimated spend of a run so far, against a cap.

    Shared by the batches of a run, which run in worker threads: hence the lock. A file
    reserves its estimate before it is sent and settles to what the API charged; a
    refusal only stops new reservations.
    """

    def __init__(self, cap_usd: float, what: str = "budget") -> None:
        self.cap, self.what = cap_usd, what
        self.spent = 0.0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"cap": self.cap, "what": self.what, "spent": self.spent}

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

    def reserve(self, estimate_usd: float) -> str | None:
        """Count the file in, or say why not (the run then stops reserving)."""
        with self._lock:
            if self.spent + estimate_usd > self.cap + 1e-12:
                return (f"{self.what} reached: {self.spent:.4f} USD estimated so far, the next file "
                        f"would add {estimate_usd:.4f} USD over the {self.cap:.4f} USD cap")
            self.spent += estimate_usd
            return None
