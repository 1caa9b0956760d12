"""Pipeline settings, loaded once per run (in the flow) and passed down.

Layers, lowest first: defaults, the TOML config file (`config.files`), the environment
(`BULKSCRIBE_*`, `.env`), then the CLI flags / deployment parameters. Tasks receive the
values they need as arguments; nothing below the flow reads the environment. The API key
is a SecretStr from NANOGPT_API_KEY or a Prefect Secret block: it never shows in a repr,
a log line, a Prefect parameter or a table. Neither do the storage options (they may
hold S3 credentials): they are read where the run runs, never passed as a parameter.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from config.files import config_path, read_config
from stt.contract import (
    DEFAULT_PRICES_USD_PER_MIN,
    MAX_UPLOAD_BYTES,
    MAX_URL_BYTES,
    SPEC_MODELS,
    WHISPER_LARGE_V3,
)

#: Settings that hold or lead to credentials: never a Prefect parameter, artifact or log line.
SECRET_SETTINGS = frozenset({"api_key", "storage_options", "embedded_server_env"})

_file_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("bulkscribe_file_values", default={})


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The values of the config file being loaded (below the environment)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _file_values.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULKSCRIBE_", env_file=".env", extra="ignore", populate_by_name=True)

    #: None: start the embedded server on loopback. Else e.g. https://nano-gpt.com/api
    api_url: str | None = None
    api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("NANOGPT_API_KEY", "BULKSCRIBE_API_KEY"))
    #: Name of a Prefect Secret block holding the key, used when NANOGPT_API_KEY is not set.
    api_key_secret_block: str | None = None

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
    #: Batches (tasks) in flight at once.
    parallel_batches: int = 2
    #: Where batch tasks run: threads of the flow process, a Dask cluster or Ray.
    task_runner: Literal["threads", "dask", "ray"] = "threads"
    #: An existing Dask scheduler (tcp://host:8786) or Ray cluster (ray://host:10001); none: start a local one.
    task_runner_address: str | None = None
    #: Worker processes of a local Dask/Ray cluster.
    task_runner_workers: int = 2

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
    #: Requests per second to a configured API (the hosted API allows 25 per key): per run, or
    #: over every run and worker through the Prefect global concurrency limit below.
    requests_per_second: float | None = 20.0
    #: Prefect global concurrency limit shared by all runs and workers when a Prefect server is
    #: configured (PREFECT_API_URL); created with slot decay = requests_per_second. Empty: per run.
    shared_rate_limit: str = "bulkscribe-api-requests"

    #: Terminal progress: a bar on a TTY, plain periodic lines otherwise ("auto"), or "off".
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    #: Seconds between plain progress lines.
    progress_interval_s: float = 10.0

    #: Prices used for estimates and summaries when the API does not state a cost.
    prices_usd_per_min: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES_USD_PER_MIN))

    #: Extra BULKSCRIBE_SERVER_* settings for the embedded server (e.g. {"workers": "2"}).
    embedded_server_env: dict[str, str] = Field(default_factory=dict)

    @field_validator("budget_usd")
    @classmethod
    def _positive_budget(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("the budget must be more than 0 USD (e.g. --budget 25)")
        return v

    @field_validator("requests_per_second")
    @classmethod
    def _positive_rate(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("requests per second must be more than 0 (e.g. --rps 20)")
        return v

    @field_validator("concurrency", "batch_size", "parallel_batches", "max_attempts", "task_runner_workers")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in SPEC_MODELS:
            raise ValueError(f"unknown model {v!r}; known: {', '.join(SPEC_MODELS)}")
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, file_secret_settings, _ConfigFileSource(settings_cls)

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: Any) -> Settings:
        """Config file (--config, $BULKSCRIBE_CONFIG or ./bulkscribe.toml), then environment, then `overrides`."""
        values = read_config(config_path(str(config) if config else None), set(cls.model_fields))
        token = _file_values.set(values)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            _file_values.reset(token)

    def public(self) -> dict[str, Any]:
        """The settings as plain JSON, without anything secret: for parameters and artifacts."""
        return self.model_dump(mode="json", exclude=set(SECRET_SETTINGS))
