"""What the routes work with, built once by the app factory and kept on `app.state.server`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from stt.server.admission import Admission
from stt.server.billing import Pricing
from stt.server.download import Downloader
from stt.server.engine import Engine
from stt.server.idempotency import KeyLocks
from stt.server.jobs import JobRunner
from stt.server.settings import ServerSettings
from stt.server.store import Store


@dataclass
class ServerState:
    settings: ServerSettings
    store: Store
    engine: Engine
    admission: Admission
    downloader: Downloader
    pricing: Pricing
    jobs_dir: Path
    runner: JobRunner
    key_locks: KeyLocks


def server_state(request: Request) -> ServerState:
    state = request.app.state.server
    assert isinstance(state, ServerState)
    return state
