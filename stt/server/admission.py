"""Admission control: how much work the server takes on at once, and how much temp disk.

Every transcription request holds a `Ticket` from the moment it is authenticated: while it
is read (an upload, or an `audioUrl` download), priced, queued and run, and, for an
asynchronous job, until the job ends. At most `workers + max_queue` tickets exist at once
and their temp files stay within `disk_budget` bytes; past either bound a request is
answered at once (503 + Retry-After) instead of piling up until clients time out, so under
load every request gets an answer and memory and disk stay bounded.

`slots` is the other half: at most `settings.engine_slots()` transcriptions run at once
(`workers`, times `max_batch` on the fast engine path, whose requests share model batches);
the tickets' holders queue for a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from stt.server.errors import Busy


class Admission:
    def __init__(self, workers: int, max_queue: int, disk_budget: int, retry_after_s: int) -> None:
        self.slots = asyncio.Semaphore(workers)  # shared with the asynchronous job workers
        self.capacity = workers + max_queue
        self.disk_budget = disk_budget
        self.retry_after_s = retry_after_s
        self.tickets = 0
        self.disk_used = 0

    def admit(self, *, force: bool = False) -> Ticket:
        """A ticket, or 503 when the server holds as many as it may (`force`: jobs resumed at start-up)."""
        if not force and self.tickets >= self.capacity:
            raise Busy("the transcription queue is full", self.retry_after_s)
        self.tickets += 1
        return Ticket(self)

    @contextmanager
    def admitted(self) -> Iterator[Ticket]:
        """A ticket for the block; released at its end unless handed over (to a job)."""
        ticket = self.admit()
        try:
            yield ticket
        finally:
            if not ticket.handed_over:
                ticket.release()

    def snapshot(self) -> dict[str, int]:
        return {"tickets": self.tickets, "capacity": self.capacity, "disk_used": self.disk_used,
                "disk_budget": self.disk_budget}


class Ticket:
    """One request's place in the server and the temp disk it holds."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.disk = 0
        self.handed_over = False
        self.released = False

    def reserve_disk(self, nbytes: int, *, force: bool = False) -> None:
        """Count `nbytes` more of temp files; 503 when that would pass the budget."""
        adm = self._admission
        if not force and nbytes > 0 and adm.disk_used + nbytes > adm.disk_budget:
            raise Busy("its temporary disk space is in use", adm.retry_after_s)
        adm.disk_used += nbytes
        self.disk += nbytes

    def hand_over(self) -> Ticket:
        """Whoever takes the ticket now releases it (the job runner, when the job ends)."""
        self.handed_over = True
        return self

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._admission.tickets -= 1
        self._admission.disk_used -= self.disk
        self.disk = 0
