"""How often and how long a transient error is tried again."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full jitter (uniform in [0, base*2^attempt], capped), never below Retry-After."""
        jittered = random.uniform(0, min(self.max_s, self.base_s * 2 ** attempt))
        return max(jittered, min(retry_after or 0.0, self.max_s * 5))
