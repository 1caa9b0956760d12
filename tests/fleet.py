"""A real Prefect fleet on loopback for tests and benchmarks: `prefect server start` with a
temporary PREFECT_HOME, the `bulkscribe` process work pool, the deployments of
deployments/prefect.yaml, and `prefect worker start` processes. Every process is started
in its own session and stopped by its PID (its process tree), never by name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "bulkscribe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Stop a process and every process it started (by PID), SIGKILL for what is left."""
    if proc.poll() is not None:
        return
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    proc.wait(timeout=10)


@dataclass
class Fleet:
    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def prefect_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BULKSCRIBE_", "NANOGPT"))}
        env.update(self.env)
        env.update({"PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                    "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(self.port),
                    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        env.update(extra)
        return env

    def _spawn(self, args: list[str], log: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.home / log, "ab") as out:
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_server(self, timeout: float = 180.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        server = self._spawn([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                             "server.log", self.prefect_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError("prefect server exited:\n" + self.log_tail("server.log"))
            try:
                if httpx.get(self.api_url + "/health", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("prefect server not ready:\n" + self.log_tail("server.log"))

    def prefect(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*PREFECT, *args], cwd=REPO, env=self.prefect_env(**extra_env), capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def deploy(self, source: str, out: str) -> None:
        self.prefect("work-pool", "create", POOL, "--type", "process")
        self.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml",
                     BULKSCRIBE_SOURCE=source, BULKSCRIBE_OUT=out)

    def start_worker(self, name: str, **worker_env: str) -> subprocess.Popen[bytes]:
        # Poll the pool every 2 s (default 10): a backfill's shards are picked up at once.
        worker = self._spawn([*PREFECT, "worker", "start", "--pool", POOL, "--name", name],
                             f"worker-{name}.log", self.prefect_env(PREFECT_WORKER_QUERY_SECONDS="2", **worker_env))
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """A machine dying: the worker and the flow runs it started, SIGKILL, no goodbye."""
        stop_tree(worker, signal.SIGKILL, timeout=5)
        self.workers.remove(worker)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_tree(proc, signal.SIGINT if proc in self.workers else signal.SIGTERM)

    def log_tail(self, name: str, n: int = 60) -> str:
        try:
            return "\n".join((self.home / name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
