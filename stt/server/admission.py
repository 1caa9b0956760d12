"""Admission control: how much work the server takes on at once.

At most `workers` decodes/transcriptions run at once and `max_queue` requests wait behind
them; past that a request is answered at once (503 + Retry-After) instead of piling up
until clients time out: under load every request gets an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from stt.server.errors import Busy


class Admission:
    def __init__(self, workers: int, max_queue: int, retry_after_s: int) -> None:
        self.slots = asyncio.Semaphore(workers)  # shared with the asynchronous job workers
        self.retry_after_s = retry_after_s
        self._capacity = workers + max_queue
        self._inside = 0

    @asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        if self._inside >= self._capacity:
            raise Busy("the transcription queue is full", self.retry_after_s)
        self._inside += 1
        try:
            async with self.slots:
                yield
        finally:
            self._inside -= 1
