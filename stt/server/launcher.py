"""Start the embedded server in a child process and stop it again.

A child process rather than a thread: the flow's own process stays free of the ML
stack, a crash or a leak in decoding cannot take the pipeline down with it, and the
pipeline talks to it over loopback HTTP exactly as it talks to the hosted API.

The child never outlives the process that started it, even when that one is killed with
SIGKILL (see `stt.server.lifeline`). Its key travels in the environment, never in argv
(argv shows in `ps`).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx

from stt.server.lifeline import Lifeline


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
    keep balances and jobs across restarts. `env` adds BULKSCRIBE_SERVER_* settings;
    `url_allowlist` the non-public hosts `audioUrl` may name (e.g. the local S3-compatible
    store the pipeline presigns URLs on: `allow_entry(endpoint_url)`).
    """

    api_key: str = field(default_factory=lambda: "bsk-" + secrets.token_urlsafe(24))
    balance_usd: float = 1_000_000.0
    host: str = "127.0.0.1"
    port: int | None = None
    db_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 180.0
    log_path: Path | None = None
    url_allowlist: Sequence[str] = ()

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._lifeline: Lifeline | None = None
        self._log: BinaryIO | None = None

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
        db = self.db_path or self._tmp_path() / "server.sqlite3"
        self.log_path = self.log_path or self._tmp_path() / "server.log"
        env = {**os.environ, **self.env, "BULKSCRIBE_SERVER_DB_PATH": str(db)}
        if self.url_allowlist:
            env["BULKSCRIBE_SERVER_URL_ALLOWLIST"] = ",".join(self.url_allowlist)
        env["BULKSCRIBE_SERVER_BOOTSTRAP_KEY"] = self.api_key
        self._lifeline = Lifeline.open()
        cmd = [sys.executable, "-m", "stt.server", "--host", self.host, "--port", str(self.port),
               "--balance", repr(self.balance_usd), *self._lifeline.server_args()]
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, pass_fds=(self._lifeline.read_fd,))
        self._lifeline.started()
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
        self._release()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _release(self) -> None:
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash would: for restart tests."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        self._release()

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _tmp_path(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def allow_entry(endpoint_url: str) -> str:
    """The allow-list entry for exactly one endpoint: `http://127.0.0.1:9000` -> `127.0.0.1:9000`."""
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"
