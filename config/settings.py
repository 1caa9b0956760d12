"""Pipeline settings, loaded once (CLI or deployment entry point) and passed down.

Tasks receive the values they need as arguments; nothing below the flow reads the
environment. The API key is a SecretStr: it never shows in a repr, a log line, a
Prefect parameter or a table.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from stt.contract import DEFAULT_PRICES_USD_PER_MIN, MAX_UPLOAD_BYTES, MAX_URL_BYTES, WHISPER_LARGE_V3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULKSCRIBE_", env_file=".env", extra="ignore", populate_by_name=True)

    #: None: start the embedded server on loopback. Else e.g. https://nano-gpt.com/api
    api_url: str | None = None
    api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("NANOGPT_API_KEY", "BULKSCRIBE_API_KEY"))

    model: str = WHISPER_LARGE_V3
    language: str = "auto"
    #: Speaker diarization and audio-event tags (Elevenlabs-STT only).
    diarize: bool = False
    tag_audio_events: bool = False

    #: The API answers a repeated Idempotency-Key without charging again (true of the
    #: embedded server, which is used so automatically; the hosted API documents no such key).
    api_idempotency_keys: bool = False
    #: Re-send requests whose answer was lost even when the API cannot de-duplicate them.
    resend_unknown: bool = False

    #: Files up to this size go as direct multipart uploads.
    max_direct_upload_bytes: int = MAX_UPLOAD_BYTES
    #: Files per Prefect task: keeps a 100,000-file run at a few thousand task runs.
    batch_size: int = 50
    #: Requests in flight at once within a task.
    concurrency: int = 4

    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    request_timeout_s: float = 1800.0

    #: fsspec storage options for SOURCE and OUT (e.g. {"endpoint_url": ...} for S3);
    #: without them S3 honours AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ~/.aws/config...
    storage_options: dict = Field(default_factory=dict)

    #: Large local files are copied here and sent as a presigned URL (e.g. s3://bucket/staging).
    staging_url: str | None = None
    presign_expires_s: int = 900
    #: Longest chunk when a file must be split (at silences).
    chunk_seconds: float = 600.0
    #: Largest file sent as a URL (the API's limit is 500 MB); larger ones are re-encoded or chunked.
    max_url_bytes: int = MAX_URL_BYTES

    #: Stop sending once the estimated cost of what was sent reaches this (USD).
    budget_usd: float | None = None
    #: Requests per second over the whole run (the hosted API allows 25).
    requests_per_second: float | None = 20.0

    #: Prices used for estimates and summaries when the API does not state a cost.
    prices_usd_per_min: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES_USD_PER_MIN))

    #: Extra BULKSCRIBE_SERVER_* settings for the embedded server (e.g. {"workers": "2"}).
    embedded_server_env: dict[str, str] = Field(default_factory=dict)
