"""The embedded server in-process on the deterministic fake engine: real app, real SQLite,
real decoding, no weights. Requests go through `httpx.ASGITransport` (no socket), so the
contract, billing, idempotency and error tests run in seconds.

Also a static file server on loopback for the `audioUrl` tests, and an engine gate that
holds transcriptions until a test releases them (to fill the queue deterministically).
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI

from stt.server.app import create_app
from stt.server.engine import Engine, Transcript
from stt.server.fake_engine import FakeEngine
from stt.server.settings import ServerSettings

KEY = "test-key"


@dataclass
class InProcessServer:
    app: FastAPI
    http: httpx.AsyncClient
    settings: ServerSettings
    api_key: str = KEY

    async def post(self, path: str, key: str | None = None, headers: dict[str, str] | None = None,
                   **kwargs: object) -> httpx.Response:
        sent = {"x-api-key": self.api_key if key is None else key, **(headers or {})}
        return await self.http.post("/api" + path, headers=sent, **kwargs)  # type: ignore[arg-type]

    async def balance(self) -> float:
        return float((await self.post("/check-balance")).json()["usd_balance"])

    async def charges(self) -> list[dict]:
        r = await self.http.get("/api/usage", headers={"x-api-key": self.api_key})
        return r.json()["charges"]


@asynccontextmanager
async def in_process_server(tmp_path: Path, *, balance: float = 1.0, engine: Engine | None = None,
                            other_keys: dict[str, float] | None = None,
                            **settings: object) -> AsyncIterator[InProcessServer]:
    """The server on `tmp_path/server.sqlite3` (the same path again: a restart)."""
    values: dict[str, object] = {"db_path": tmp_path / "server.sqlite3", "engine": "fake", **settings}
    config = ServerSettings(**values)  # type: ignore[arg-type]
    app = create_app(config, engine=engine, api_keys={KEY: balance, **(other_keys or {})})
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as http:
            yield InProcessServer(app, http, config)


class GatedEngine(FakeEngine):
    """The fake engine, but each transcription waits until `gate` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def transcribe(self, audio: np.ndarray | str, *, accurate: bool, language: str | None,
                   word_timestamps: bool = False) -> Transcript:
        self.started.release()
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return super().transcribe(audio, accurate=accurate, language=language, word_timestamps=word_timestamps)


class FlakyEngine(FakeEngine):
    """The fake engine, but its first `failures` transcriptions crash."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures

    def transcribe(self, audio: np.ndarray | str, *, accurate: bool, language: str | None,
                   word_timestamps: bool = False) -> Transcript:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("simulated inference crash")
        return super().transcribe(audio, accurate=accurate, language=language, word_timestamps=word_timestamps)


async def wait_for_job(api: InProcessServer, job: dict, timeout_s: float = 60) -> dict:
    """Poll until the job completes or fails."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        r = await api.post("/transcribe/status", json=job)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("completed", "failed"):
            return r.json()
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job['runId']} did not finish")


# -- a static HTTP server on loopback for the audioUrl tests --------------------------------


class FileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, plus /endless (a chunked body that never ends by itself), /huge (a
    Content-Length over any cap, no body), /redirect?to=URL (a 302 to URL) and /loop (a 302
    to itself)."""

    chunks_sent = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if self.path.startswith("/endless"):
            self._endless()
        elif self.path.startswith("/huge"):
            self.send_response(200)
            self.send_header("Content-Length", str(600 * 1024 * 1024))
            self.end_headers()
        elif self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            try:
                super().do_GET()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading (413, 503): what these tests want

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"\0" * 65536
        try:
            for _ in range(2000):  # bounded: 128 MB at most
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                type(self).chunks_sent += 1
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


class _IPv6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextmanager
def file_server(folder: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """`http://HOST:PORT` serving `folder` until the block ends (HOST: a loopback address)."""

    def handler(*args: object, **kwargs: object) -> FileHandler:
        return FileHandler(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

    server_class = _IPv6Server if ":" in host else http.server.ThreadingHTTPServer
    httpd = server_class((host, 0), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
