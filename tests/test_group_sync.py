"""tasks.group_sync: appenders to one file share fsyncs, and none returns before its write is synced."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tasks import group_sync
from tests.conftest import run_threads


def _slow_recording_fsync(monkeypatch: pytest.MonkeyPatch, syncs: list[tuple[float, float]]) -> None:
    real = os.fsync
    lock = threading.Lock()

    def fsync(fd: int) -> None:
        start = time.monotonic()
        time.sleep(0.05)  # a slow disk: writers arrive while a sync runs
        real(fd)
        with lock:
            syncs.append((start, time.monotonic()))

    monkeypatch.setattr(group_sync.os, "fsync", fsync)


def test_concurrent_appenders_share_syncs_and_each_is_covered(tmp_path, monkeypatch):
    syncs: list[tuple[float, float]] = []
    _slow_recording_fsync(monkeypatch, syncs)
    path = tmp_path / "journal"
    path.write_bytes(b"")
    written: dict[int, float] = {}
    returned: dict[int, float] = {}
    go = threading.Barrier(8)

    def append(i: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            go.wait()
            os.write(fd, f"line {i}\n".encode())
            written[i] = time.monotonic()
            group_sync.fsync(fd)
            returned[i] = time.monotonic()
        finally:
            os.close(fd)

    run_threads(append, 8)
    assert sorted(returned) == list(range(8))
    assert 1 <= len(syncs) < 8, f"{len(syncs)} syncs for 8 appenders arriving together"
    for i in range(8):  # some sync started after the write and ended before the call returned
        assert any(written[i] <= start and end <= returned[i] for start, end in syncs), i
    assert path.read_text().count("line ") == 8


def test_a_failed_sync_raises_and_the_next_caller_syncs_again(tmp_path, monkeypatch):
    calls = []
    real = os.fsync

    def flaky(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(group_sync.os, "fsync", flaky)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with pytest.raises(OSError):
            group_sync.fsync(fd)
        group_sync.fsync(fd)
    finally:
        os.close(fd)
    assert len(calls) == 2
