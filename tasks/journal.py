"""A batch's journal: one file holding the ledger entries of the batch's requests.

On a local disk, creating a file is what the ledger's bookkeeping costs (0.3-0.8 ms of
CPU per file on the ext4 measured here, against microseconds for a link or an append),
and a claim and its entry once took a file per request. So a batch opens one journal
file, appends each request's entries to it as JSON lines (each with its request key,
fsynced), and gives it a name per request by hard links: the request's claim
(`OUT/_ledger/<key>.claim.<gen>`, created exclusively: link(2) fails on an existing
name) and its ledger entry (`OUT/_ledger/<key>.json`). Every reader finds a request's
state as the last whole line with its key (`tasks.ledger.parse_entry`), whichever name
it opens. The journal's own name, under `OUT/_ledger/_journals/`, goes when the batch
ends; its content stays as long as a claim or an entry links it (tombstones, or entries
a crash left behind). A name left by a crash is removed by a later run
(`Claims.orphan_journals`).

Object stores have no links or appends: there claims and entries are files of their own.
"""

from __future__ import annotations

import os
import threading
import uuid

from tasks import group_sync, storage

#: A journal past this size takes no more entries: the batch's later requests fall back
#: to files of their own (a tombstone keeps its whole journal until it is collected).
JOURNAL_MAX_BYTES = 4 * 1024 * 1024


class Journal:
    """The journal of one batch (local disks only), opened on its first line."""

    def __init__(self, ledger_root: str, run_id: str) -> None:
        self.path = f"{ledger_root}/_journals/{run_id}.{uuid.uuid4().hex[:12]}.jsonl"
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()
        self._claiming: set[str] = set()
        self._writers = 0
        self._closed = False

    def append(self, line: bytes) -> bool:
        """Append `line` (one JSON object, no newline), fsynced; False once the journal is
        full or closed."""
        with self._lock:
            if self._closed or self._size + len(line) + 1 > JOURNAL_MAX_BYTES:
                return False
            if self._fd is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
            fd = self._fd
            self._size += len(line) + 1
            self._writers += 1
        try:
            storage.write_all(fd, b"\n" + line)
            group_sync.fsync(fd)  # outside the lock: the batch's appenders share their fsyncs
        finally:
            with self._lock:
                self._writers -= 1
                self._close_when_idle()
        return True

    def claim(self, key: str, name: str, line: bytes) -> bool | None:
        """Create the claim `name` of request `key` holding `line`: appended, then the
        journal linked as `name` (link(2) fails on an existing name: an exclusive create).
        False when `name` exists; None when the journal is full.

        A line is appended only when no other request of this batch holds or is claiming
        the key: its last line is what every name of the key reads, so a losing attempt
        must not leave one behind it."""
        with self._lock:
            if key in self._claiming:
                return False
            self._claiming.add(key)
        try:
            if os.path.lexists(name):
                return False
            if not self.append(line):
                return None
            try:
                os.link(self.path, name)
            except FileExistsError:  # another process won it meanwhile (its own journal)
                return False
            return True
        finally:
            with self._lock:
                self._claiming.discard(key)

    def close(self) -> None:
        """The batch is over: drop the journal's own name (its links keep what they need).
        A thread still appending (an interrupted batch) closes the file when it is done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            opened = self._fd is not None
            self._close_when_idle()
        if opened:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _close_when_idle(self) -> None:  # under the lock
        if self._closed and self._writers == 0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None
