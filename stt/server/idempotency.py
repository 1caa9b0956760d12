"""Idempotency-Key: the same request sent again gets the first answer, never a second charge.

A key names one request: the audio's bytes and the options that change the answer
(`TranscribeParams.options`). Sent again with the same request, the paid answer (or the
job) is replayed; with other audio or options, the key is refused (422), never replayed.
Only what was paid for is recorded: a request that fails (400, 402, 500, a refunded job)
leaves the key free, so the same request can simply be sent again. Two requests with the
same key at the same time run one after the other, so the second one replays the first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stt.server.errors import IdempotencyConflict
from stt.server.request import AudioRequest
from stt.server.store import IdempotentRecord

#: Header on every /api answer, so clients know they may rely on Idempotency-Key.
ADVERTISED = (b"idempotency-keys", b"supported")
REPLAYED = {"Idempotent-Replayed": "true"}


def request_hash(req: AudioRequest) -> str:
    """sha256 of the options and the audio's bytes (read in blocks: files go up to 500 MB)."""
    digest = hashlib.sha256(json.dumps(req.params.options(), sort_keys=True).encode())
    with open(req.audio.path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def replayable(record: IdempotentRecord | None, fingerprint: str) -> IdempotentRecord | None:
    """The record to replay for this request, None to run it; 422 when the key named another."""
    if record is None:
        return None
    if record.request_hash is not None and record.request_hash != fingerprint:
        raise IdempotencyConflict()
    return record


class KeyLocks:
    """One request at a time per (API key, Idempotency-Key)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key_hash: str, idem: str) -> AsyncIterator[None]:
        name = (key_hash, idem)
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


class AdvertiseIdempotency:
    """ASGI middleware: every /api answer, errors included, carries `Idempotency-Keys: supported`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_advertised(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), ADVERTISED]
            await send(message)

        await self.app(scope, receive, send_advertised)
