"""How a `bulkscribe run` ends on SIGTERM (systemd, cron's timeout, a container stop).

Like Ctrl-C: the flow run is marked as ended. Requests in flight are not waited for: if
the run has not ended within `grace_s`, the process exits anyway (what was sent is in
OUT's ledger for the next run; the servers the run started die with it). Prefect installs
its own SIGTERM handler while a flow runs, so the flow re-arms ours around it
(`arm_in_flow`); in a worker's flow-run process nothing is armed and Prefect's
cancellation works as it does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

INTERRUPTED = "bulkscribe: interrupted; re-run the same command to resume"
_grace_s: float | None = None


def _start_watchdog() -> None:
    def hard_exit() -> None:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        os._exit(130)

    assert _grace_s is not None
    timer = threading.Timer(_grace_s, hard_exit)
    timer.daemon = True
    timer.start()


def stop_on_sigterm(grace_s: float) -> None:
    """For the CLI's process: SIGTERM raises KeyboardInterrupt and the process exits within `grace_s`."""
    global _grace_s
    _grace_s = grace_s

    def stop(signum: int, frame: FrameType | None) -> None:
        _start_watchdog()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def arm_in_flow() -> None:
    """Inside a flow run started by the CLI: keep Prefect's handler, and start the watchdog first."""
    if _grace_s is None or threading.current_thread() is not threading.main_thread():
        return
    previous: Callable[[int, FrameType | None], Any] | int | None = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    prefect_handler = previous

    def stop(signum: int, frame: FrameType | None) -> None:
        _start_watchdog()
        prefect_handler(signum, frame)

    signal.signal(signal.SIGTERM, stop)
