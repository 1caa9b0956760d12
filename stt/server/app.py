"""The embedded NanoGPT-compatible transcription server (FastAPI): the app factory.

`create_app()` builds an app from explicit settings, store and engine, so tests can run
several differently configured servers side by side (in-process over
`httpx.ASGITransport`, or under uvicorn); `serve()` runs one under uvicorn. The server
imports the shared contract (`stt.contract`) and nothing of the pipeline.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
from fastapi import FastAPI

from stt.server import logs
from stt.server.admission import Admission
from stt.server.billing import Pricing
from stt.server.download import Downloader
from stt.server.engine import Engine
from stt.server.errors import install_handlers
from stt.server.faults import FaultInjector, FaultPlan
from stt.server.idempotency import AdvertiseIdempotency, KeyLocks
from stt.server.jobs import JobRunner
from stt.server.routes import router
from stt.server.settings import ServerSettings
from stt.server.state import ServerState
from stt.server.store import Store
from stt.server.url_guard import UrlPolicy

log = logging.getLogger("bulkscribe.server")


def create_app(settings: ServerSettings | None = None, *, store: Store | None = None,
               engine: Engine | None = None, api_keys: dict[str, float] | None = None) -> FastAPI:
    """Build the server. `api_keys` maps keys to the balance (USD) they start with."""
    settings = settings or ServerSettings()
    store = store or Store(settings.db_path)
    engine = engine or engine_for(settings)
    for key, balance in (api_keys or {}).items():
        store.ensure_key(key, balance)
    admission = Admission(settings.engine_slots(), settings.max_queue, settings.temp_disk_budget_bytes,
                          settings.retry_after_s)
    downloader = Downloader(settings.max_url_bytes, settings.url_download_timeout_s,
                            UrlPolicy.parse(settings.url_allowlist))
    state = ServerState(
        settings=settings, store=store, engine=engine, admission=admission, downloader=downloader,
        pricing=Pricing(settings.prices_usd_per_min), jobs_dir=jobs_dir_for(settings),
        runner=JobRunner(store, engine, admission, retention=timedelta(hours=settings.job_retention_hours)),
        key_locks=KeyLocks(),
    )
    app = FastAPI(title="bulkscribe embedded transcription server", lifespan=_lifespan)
    app.state.server = state
    install_handlers(app)
    app.include_router(router)
    plan = FaultPlan.parse(settings.faults)
    if plan is not None:
        log.warning("fault injection on: %s", settings.faults)
        app.add_middleware(FaultInjector, plan=plan)
    if settings.idempotency:
        app.add_middleware(AdvertiseIdempotency)  # outermost: injected errors advertise it too
    return app


def engine_for(settings: ServerSettings) -> Engine:
    """The engine the settings name: `whisper` (faster-whisper) or `fake` (deterministic, no weights)."""
    if settings.engine == "fake":
        from stt.server.fake_engine import FakeEngine

        return FakeEngine()
    from stt.server.whisper_engine import WhisperEngine

    return WhisperEngine(settings)


def jobs_dir_for(settings: ServerSettings) -> Path:
    db = Path(settings.db_path)
    return settings.jobs_dir or db.with_name(db.stem + "-jobs")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.server
    # Load the weights before accepting traffic: the first request should not pay for
    # it, and a bad model dir should stop the server, not fail every request.
    await anyio.to_thread.run_sync(state.engine.load)
    # faster-whisper's decode_audio runs gc.collect() on every call; freezing what exists
    # after start-up (the model, FastAPI, pydantic) keeps each collection ~50 ms shorter.
    gc.freeze()
    state.jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    await state.runner.start(state.settings.workers)
    log.info("ready: weights %s, %d worker(s), queue %d", state.engine.weights_name, state.settings.workers,
             state.settings.max_queue)
    yield
    await state.runner.stop()


def serve(settings: ServerSettings, api_keys: dict[str, float]) -> None:
    """Run the server in the foreground (used by `bulkscribe serve` and the embedded launcher)."""
    import uvicorn

    logs.configure()
    app = create_app(settings, api_keys=api_keys)
    # log_config=None: uvicorn's loggers go through the root handler and its redaction.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                log_config=None)
