"""Group commit: threads that append to the same file share its fsyncs.

The ledger makes every request's state durable before the next step (its claim before
the request leaves, its answer before anything else): an append and an fsync. At the
start of a batch its files claim their requests at once, in as many threads, all in the
batch's journal; each fsync of that file costs CPU (~0.1 ms here) and a flush of the
disk. `fsync(fd)` returns once everything written to the file before the call is on
disk, like os.fsync, but when another thread is already syncing the same file it waits
for that sync to end and, if that did not cover it, one more sync that covers every
writer waiting meanwhile (one flush for all of them instead of one each).
"""

from __future__ import annotations

import os
import threading

_cond = threading.Condition()
_files: dict[tuple[int, int], _File] = {}


class _File:
    __slots__ = ("written", "synced", "syncing", "users")

    def __init__(self) -> None:
        self.written = 0  # tickets handed out: writes that asked to be synced
        self.synced = 0  # every ticket up to this one is on disk
        self.syncing = False
        self.users = 0


def fsync(fd: int) -> None:
    """os.fsync(fd), shared with the threads syncing the same file (same device and inode)."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    with _cond:
        f = _files.setdefault(key, _File())
        f.users += 1
        f.written += 1
        ticket = f.written
        try:
            while f.synced < ticket:
                if f.syncing:
                    _cond.wait()
                else:
                    _lead(f, fd)
        finally:
            f.users -= 1
            if f.users == 0:
                del _files[key]


def _lead(f: _File, fd: int) -> None:  # under _cond: one sync for every ticket handed out so far
    f.syncing = True
    target = f.written
    _cond.release()
    try:
        os.fsync(fd)
    finally:
        _cond.acquire()
        f.syncing = False
        _cond.notify_all()
    f.synced = max(f.synced, target)
