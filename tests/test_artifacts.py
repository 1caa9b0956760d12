"""A run's artifacts are made once, even when the Prefect API's answer to the POST is lost.

Prefect's client sends a POST again when the connection drops before the answer (it counts
that as retryable), and the API makes a new artifact for each POST: a run would show two
progress bars or two summaries. Real parts: a real Prefect API behind a loopback proxy
that lets the first artifact POST through and then drops the connection unanswered.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.context import FlowRunContext, SyncClientContext
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.artifacts import ProgressArtifact, publish_summary, read_summary, run_artifacts


class _DropFirstAnswer(BaseHTTPRequestHandler):
    """Forwards to the real API; the first POST to /artifacts/ is done there, its answer dropped."""

    upstream = ""
    dropped: list[str] = []
    lock = threading.Lock()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        with httpx.Client(trust_env=False, timeout=60) as client:
            answer = client.request(self.command, self.upstream + self.path, content=body, headers=headers)
        with self.lock:
            drop = self.command == "POST" and self.path.rstrip("/").endswith("/artifacts") and not self.dropped
            if drop:
                self.dropped.append(self.path)
        if drop:  # the API made the artifact; the client never hears of it
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(answer.status_code)
        for k, v in answer.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def lossy_api(prefect_api) -> Iterator[type[_DropFirstAnswer]]:
    handler = type("Handler", (_DropFirstAnswer,), {"upstream": PREFECT_API_URL.value().removesuffix("/api"),
                                                    "dropped": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{proxy.server_address[1]}/api"
    try:
        yield handler
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("kind", ["table", "progress"])
def test_artifact_made_once_when_the_answer_is_lost(lossy_api, kind):
    @flow(name="lossy_artifact")
    def run() -> UUID:
        # The run's own client talks to the API directly; a client made here goes through the proxy.
        with temporary_settings({PREFECT_API_URL: lossy_api.url}), SyncClientContext(httpx_settings={"timeout": 30.0}):
            if kind == "table":
                publish_summary({"seen": 3, "transcribed": 2, "failed": 1}, "a -> b")
            else:
                assert ProgressArtifact.start("a -> b").artifact_id is not None
        return FlowRunContext.get().flow_run.id

    run_id = run()
    assert lossy_api.dropped, "the proxy dropped no answer: the test did not test anything"
    made = run_artifacts(run_id)
    assert [a.type for a in made] == [kind], [(a.type, a.created, a.description) for a in made]
    if kind == "table":
        assert read_summary(made[0].data)["transcribed"] == 2
