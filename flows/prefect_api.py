"""A temporary Prefect API for a command-line run, bound to die with it.

Without PREFECT_API_URL, Prefect starts a temporary API server in a child process and
stops it at exit; a `kill -9` of the run skips that exit and leaves the server running
(~200 MB) for good. So `bulkscribe run` starts that server itself, the way Prefect does
(uvicorn on Prefect's app factory, loopback, a free port), but as a child that the kernel
stops when the run's process ends, however it ends (PR_SET_PDEATHSIG), and points
PREFECT_API_URL at it for the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1

#: Prefect's task run recorder writes each task-run state event in its own transaction by
#: default (batch size 1): ~25 ms of the API server's CPU per event, three events per batch
#: task, the largest share of what the temporary API costs a run (batched: 1.5 ms instead of
#: 2.1-2.8 ms of its CPU per file, 1,000 silent clips as bench/pipeline_overhead sends them,
#: batches of 50 on a 2-core VM). Batched, the states
#: reach its database at most a second later, which nobody waits for: the flow follows
#: its tasks in-process, and the server writes what it holds when it stops. Values set in
#: the environment win.
RECORDER_BATCHING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",  # whole seconds (Prefect takes int())
}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def temporary_prefect_api(timeout_s: float = 180.0) -> Iterator[str | None]:
    """Yields the API URL of a temporary server, or None when one is configured already."""
    import prefect
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        yield None
        return

    port = _free_port()
    env = {**RECORDER_BATCHING, **os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    # A graceful shutdown of at most 3 s: an interrupted run leaves client connections open,
    # and uvicorn would wait for them until the CLI's watchdog ends the process (10 s).
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
           "error", "--lifespan", "on", "--timeout-graceful-shutdown", "3"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: PLW1509
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(proc, url, timeout_s)
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        # No flow-run heartbeats: they let a server's automations mark a crashed run, and this
        # server ends with the run. Prefect's heartbeat thread also makes every flow run end
        # on a whole second after its start (it is joined from a 1 s sleep): up to 1 s idle.
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield url
            finally:
                _drain_to(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain_to(url: str) -> None:
    """Send the run's last logs and events before the server goes (as Prefect's test harness does)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for pending in (_drain_logs(APILogWorker), EventsWorker.drain_all()):
            if inspect.isawaitable(pending):
                await pending

    run_coro_as_sync(drain())


def _drain_logs(worker: type) -> object:
    try:
        return worker.instance().drain()  # type: ignore[attr-defined]
    except RuntimeError:  # never started
        return None


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the temporary Prefect API exited with {proc.returncode}")
            try:
                if http.get(url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the temporary Prefect API did not answer within {timeout_s:.0f} s")
