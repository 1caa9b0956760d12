"""The API a run talks to: its URL, key and what it supports."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from stt.client import RateLimiter, STTClient


@dataclass(frozen=True)
class Endpoint:
    url: str
    api_key: SecretStr
    timeout_s: float = 1800.0
    #: The API answers a repeated Idempotency-Key with the first answer, without charging
    #: again (the embedded server does; the hosted API documents no such key).
    idempotent: bool = False
    #: Local files under `files_root` that the API can fetch from `files_url` + their quoted
    #: path under it (the embedded server, from a loopback file server of the run).
    files_root: str | None = None
    files_url: str | None = None

    def client(self, max_connections: int = 100, rate_limiter: RateLimiter | None = None) -> STTClient:
        timeout = httpx.Timeout(connect=15.0, read=self.timeout_s, write=300.0, pool=None)
        return STTClient(self.url, self.api_key.get_secret_value(), timeout=timeout,
                         max_connections=max_connections, rate_limiter=rate_limiter)
