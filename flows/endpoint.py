"""The API a run talks to: the configured one, or the embedded server started for the run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from pydantic import SecretStr

from config.settings import Settings
from flows.errors import RunAborted
from flows.file_server import serve_files
from stt import errors
from tasks.endpoint import Endpoint
from tasks.retry import RetryPolicy
from tasks.storage import is_remote, s3_endpoint


def api_key(settings: Settings) -> SecretStr | None:
    """NANOGPT_API_KEY, else the Prefect Secret block named by `api_key_secret_block`."""
    if settings.api_key is not None and settings.api_key.get_secret_value():
        return settings.api_key
    if not settings.api_key_secret_block:
        return None
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(settings.api_key_secret_block).get()  # type: ignore[union-attr]
    except (ValueError, RuntimeError) as exc:
        raise RunAborted(f"cannot load the Prefect Secret block {settings.api_key_secret_block!r} named by "
                         f"api_key_secret_block ({type(exc).__name__}); create it with "
                         "`prefect block create secret` or set NANOGPT_API_KEY") from None
    return SecretStr(str(value))


@contextlib.contextmanager
def api_endpoint(settings: Settings, source: str | None = None) -> Iterator[Endpoint]:
    """The hosted (or any) API when a URL is configured, else the embedded server
    on a free loopback port with a fresh random key, stopped at the end.

    The embedded server may fetch exactly what the run hands it by URL: the S3 endpoint
    the run presigns on, and a local SOURCE served on loopback (large files then go as an
    `audioUrl` instead of being re-encoded or cut into chunks)."""
    if settings.api_url:
        key = api_key(settings)
        if key is None:
            raise RunAborted(f"an API URL is set ({settings.api_url}) but no key: set NANOGPT_API_KEY "
                             "or name a Prefect Secret block with api_key_secret_block")
        yield Endpoint(settings.api_url, key, settings.request_timeout_s, idempotent=settings.api_idempotency_keys)
        return
    from stt.server.launcher import EmbeddedServer, allow_entry

    with contextlib.ExitStack() as stack:
        allowed = [allow_entry(url) for url in (s3_endpoint(settings.storage_options),) if url]
        served = stack.enter_context(serve_files(source)) if source and not is_remote(source) else None
        if served is not None:
            allowed.append(allow_entry(served.url))
        server = stack.enter_context(EmbeddedServer(env=settings.embedded_server_env, url_allowlist=allowed))
        yield Endpoint(server.api_url, SecretStr(server.api_key), settings.request_timeout_s, idempotent=True,
                       files_root=served.root if served else None, files_url=served.url if served else None)


@dataclass(frozen=True)
class Access:
    balance: float
    #: The endpoint, knowing whether the API answers a repeated Idempotency-Key without
    #: charging again (it says so in an `Idempotency-Keys: supported` header).
    endpoint: Endpoint


def check_access(endpoint: Endpoint, retry: RetryPolicy = RetryPolicy()) -> Access:
    """Fail fast on a bad key before any file is sent; the USD balance and what the API supports.

    Transient errors (503, 429, a dropped connection) are retried like any request:
    one busy moment of the API must not abort a night's run."""

    async def check() -> Access:
        async with endpoint.client() as client:
            attempt = 0
            while True:
                attempt += 1
                try:
                    balance = float((await client.balance()).usd_balance)
                    idempotent = endpoint.idempotent or client.idempotency_supported
                    return Access(balance, replace(endpoint, idempotent=idempotent))
                except errors.TransientError as exc:
                    if attempt >= retry.max_attempts:
                        raise
                    await asyncio.sleep(retry.delay(attempt - 1, exc.retry_after))

    try:
        return asyncio.run(check())
    except errors.Unauthorized as exc:
        raise RunAborted(f"the API rejected the key ({exc.message}); nothing was sent") from None
    except errors.NotFound:
        raise RunAborted(f"cannot reach the API at {endpoint.url}: 404 Not Found{api_suffix_hint(endpoint.url)}") from None
    except errors.STTError as exc:
        raise RunAborted(f"cannot reach the API at {endpoint.url}: {exc}") from None


def api_suffix_hint(url: str) -> str:
    """The fix for the commonest wrong URL: the host without its `/api` path."""
    if url.rstrip("/").endswith("/api"):
        return ""
    return f"; the API lives under /api: try --api-url {url.rstrip('/')}/api"
