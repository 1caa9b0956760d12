"""Start the embedded server in a child process and stop it again.

A child process rather than a thread: the flow's own process stays free of the ML
stack, a crash or a leak in decoding cannot take the pipeline down with it, and the
pipeline talks to it over loopback HTTP exactly as it talks to the hosted API.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class ServerStartError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedServer:
    """`with EmbeddedServer() as srv:` -> srv.api_url, srv.api_key.

    Without `db_path`, state lives in a temp dir and goes with the server; pass one to
    keep balances and jobs across restarts. `env` adds BULKSCRIBE_SERVER_* settings.
    """

    api_key: str = field(default_factory=lambda: "bsk-" + secrets.token_urlsafe(24))
    balance_usd: float = 1_000_000.0
    host: str = "127.0.0.1"
    port: int | None = None
    db_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 180.0
    log_path: Path | None = None

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/api"

    def start(self) -> EmbeddedServer:
        self.port = self.port or free_port(self.host)
        if self.db_path is None or self.log_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bulkscribe-server-")
        db = self.db_path or Path(self._tmp.name) / "server.sqlite3"
        self.log_path = self.log_path or Path(self._tmp.name) / "server.log"
        env = {**os.environ, **self.env, "BULKSCRIBE_SERVER_DB_PATH": str(db)}
        # The key goes through the environment, not argv: argv is visible in `ps`.
        env["BULKSCRIBE_SERVER_BOOTSTRAP_KEY"] = self.api_key
        cmd = [sys.executable, "-m", "stt.server", "--host", self.host, "--port", str(self.port),
               "--balance", repr(self.balance_usd)]
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(trust_env=False, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise ServerStartError(f"embedded server exited with {self._proc.returncode}:\n{self.log_tail()}")
                try:
                    if http.get(self.base_url + "/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"embedded server not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash would: for restart tests."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except (OSError, TypeError):
            return ""

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
