"""Everything a batch needs to know, built once per run from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from stt.client import PollPolicy, RateLimiter
from tasks.budget import Budget
from tasks.claims import Owner
from tasks.endpoint import Endpoint
from tasks.identity import JobOptions
from tasks.retry import RetryPolicy
from tasks.request_loop import RequestLoop
from tasks.upload import UploadPolicy

#: What two chunks of a diarized file share, to tie their speakers together.
CHUNK_OVERLAP_S = 30.0


def job_options(settings: Settings) -> JobOptions:
    return JobOptions(model=settings.model, language=settings.language, diarize=settings.diarize,
                      tag_audio_events=settings.tag_audio_events)


def upload_policy(settings: Settings, endpoint: Endpoint | None = None) -> UploadPolicy:
    return UploadPolicy(
        max_direct_upload_bytes=settings.max_direct_upload_bytes, max_url_bytes=settings.max_url_bytes,
        staging_url=settings.staging_url, presign_expires_s=settings.presign_expires_s,
        chunk_seconds=settings.chunk_seconds, storage_options=settings.storage_options,
        chunk_overlap_s=CHUNK_OVERLAP_S if settings.diarize else 0.0,
        served_root=endpoint.files_root if endpoint else None, served_url=endpoint.files_url if endpoint else None,
    )


@dataclass
class BatchConfig:
    out: str
    run_id: str
    options: JobOptions
    endpoint: Endpoint
    upload: UploadPolicy
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: PollPolicy = field(default_factory=PollPolicy)
    concurrency: int = 4
    #: The process whose claims this run's requests are (see tasks.claims).
    owner: Owner | None = None
    #: Request keys OUT already holds rows for (read once per run): their content is not sent again.
    done_contents: frozenset[str] = frozenset()
    #: Re-send requests whose earlier answer was lost even if the API cannot de-duplicate.
    resend_unknown: bool = False
    prices_usd_per_min: dict[str, float] = field(default_factory=dict)
    #: Shared by all batches of a run: stops sending once the estimate reaches the cap.
    budget: Budget | None = None
    rate_limiter: RateLimiter | None = None
    #: The run's event loop, client and request slots, shared by its batches on threads
    #: (None on Dask/Ray: each batch has its own).
    requests: RequestLoop | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, out: str, run_id: str, endpoint: Endpoint,
                      **run_state: Any) -> BatchConfig:
        """The batch configuration of a run; `run_state`: owner, done_contents, budget, rate_limiter."""
        return cls(
            out=out, run_id=run_id, options=job_options(settings), endpoint=endpoint,
            upload=upload_policy(settings, endpoint),
            retry=RetryPolicy(settings.max_attempts, settings.backoff_base_s, settings.backoff_max_s),
            concurrency=settings.concurrency, resend_unknown=settings.resend_unknown,
            prices_usd_per_min=dict(settings.prices_usd_per_min), **run_state,
        )

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.upload.storage_options

    @property
    def price_per_min(self) -> float | None:
        return self.prices_usd_per_min.get(self.options.model)

    def worst_direct_cost(self) -> float:
        """The most a direct upload can cost: its byte limit at 8 kbit/s, the lowest bitrate speech is stored at."""
        price = self.price_per_min or max(self.prices_usd_per_min.values(), default=0.0)
        return self.upload.max_direct_upload_bytes / 1000.0 / 60.0 * price
