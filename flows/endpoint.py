"""The API a run talks to: the configured one, or the embedded server started for the run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from pydantic import SecretStr

from config.settings import Settings
from flows.errors import RunAborted
from stt import errors
from tasks.endpoint import Endpoint


@contextlib.contextmanager
def api_endpoint(settings: Settings) -> Iterator[Endpoint]:
    """The hosted (or any) API when a URL is configured, else the embedded server
    on a free loopback port with a fresh random key, stopped at the end."""
    if settings.api_url:
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise RunAborted(f"an API URL is set ({settings.api_url}) but no key: set NANOGPT_API_KEY")
        yield Endpoint(settings.api_url, settings.api_key, settings.request_timeout_s,
                       idempotent=settings.api_idempotency_keys)
        return
    from stt.server.launcher import EmbeddedServer

    with EmbeddedServer(env=settings.embedded_server_env) as server:
        yield Endpoint(server.api_url, SecretStr(server.api_key), settings.request_timeout_s, idempotent=True)


def check_access(endpoint: Endpoint) -> float:
    """Fail fast on a bad key before any file is sent; returns the USD balance."""

    async def check() -> float:
        async with endpoint.client() as client:
            return float((await client.balance()).usd_balance)

    try:
        return asyncio.run(check())
    except errors.Unauthorized as exc:
        raise RunAborted(f"the API rejected the key ({exc.message}); nothing was sent") from None
    except errors.STTError as exc:
        raise RunAborted(f"cannot reach the API at {endpoint.url}: {exc}") from None
