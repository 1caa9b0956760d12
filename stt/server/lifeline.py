"""An embedded server ends when the process that started it ends, however it ends (kill -9 too).

Two mechanisms, because each has a blind spot:

- a lifeline pipe: the launcher keeps the write end open and hands the read end to the
  server, which reads it in a thread; when the launcher's process dies, the kernel closes
  its end and the read returns. It works whatever thread started the server; a child the
  launcher forks without exec keeps the pipe open (multiprocessing's fork start method).
- PR_SET_PDEATHSIG (Linux): the kernel sends SIGTERM when the parent dies. It fires when
  the *thread* that started the child ends, so it is only asked for when the server was
  started from the main thread.

Either way the server gets SIGTERM and shuts down as on `stop()`: unfinished jobs stay
queued for the next start.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("bulkscribe.server")

_PR_SET_PDEATHSIG = 1
_GRACE_S = 20.0  # then exit hard: nobody is waiting for a graceful shutdown


@dataclass
class Lifeline:
    """The launcher's side: a pipe whose read end the server inherits."""

    read_fd: int
    write_fd: int

    @classmethod
    def open(cls) -> Lifeline:
        read_fd, write_fd = os.pipe()  # both non-inheritable; Popen(pass_fds=) passes the read end
        return cls(read_fd, write_fd)

    def server_args(self) -> list[str]:
        args = ["--lifeline-fd", str(self.read_fd)]
        if threading.current_thread() is threading.main_thread():
            args += ["--parent-pid", str(os.getpid())]
        return args

    def started(self) -> None:
        """The server has its copy of the read end: drop ours."""
        os.close(self.read_fd)
        self.read_fd = -1

    def close(self) -> None:
        """Cut the lifeline (the server stops if it still runs)."""
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


def hold_on(lifeline_fd: int | None, parent_pid: int | None) -> None:
    """The server's side: stop this process when the launcher's ends."""
    if parent_pid is not None and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # it died before the prctl
            _stop("the process that started this server has already ended")
    if lifeline_fd is not None:
        threading.Thread(target=_watch, args=(lifeline_fd,), name="lifeline", daemon=True).start()


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    _stop("the process that started this server ended")


def _stop(reason: str) -> None:
    log.warning("%s: stopping", reason)
    timer = threading.Timer(_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)
