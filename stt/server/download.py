"""Fetching an `audioUrl`: streamed to a private temp file, never held whole in memory.

Every connection goes through the URL guard (`url_guard.GuardedBackend`), redirects
included (at most `MAX_REDIRECTS`, each one checked again). Whatever goes wrong upstream
(refused address, DNS or connect error, an error status, too many redirects) the client
gets one generic message: the server must not become an oracle for what answers where.
The reason is logged, without the URL's query string (presigned URLs carry credentials).

httpcore is used directly rather than httpx: the guard needs its network backend, and its
logger never writes URLs.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import httpcore

from stt.server.admission import Ticket
from stt.server.errors import APIError
from stt.server.tempfiles import TempAudio, new_temp_file
from stt.server.url_guard import GuardedBackend, UrlPolicy

log = logging.getLogger("bulkscribe.server.download")

MAX_REDIRECTS = 5
UNREACHABLE = ("could not fetch audioUrl: it is not reachable from this server or did not answer with the audio "
               "(addresses on loopback, private or link-local networks are refused)")
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 1 << 20


class Unreachable(Exception):
    """Why an URL could not be fetched; logged, never shown to the client."""


class Downloader:
    def __init__(self, max_bytes: int, read_timeout_s: float, policy: UrlPolicy,
                 connect_timeout_s: float = 30.0) -> None:
        self.max_bytes = max_bytes
        self.policy = policy
        self.timeouts = {"connect": connect_timeout_s, "read": read_timeout_s, "write": 30.0, "pool": 30.0}
        self._ssl = ssl.create_default_context()

    async def fetch(self, url: str, ticket: Ticket) -> TempAudio:
        """The audio at `url` in a temp file counted on `ticket`'s disk budget.

        400 when it cannot be fetched, 413 past the size cap, 503 past the disk budget."""
        _check_scheme(url)
        fd, path = new_temp_file("bulkscribe-url-")
        audio = TempAudio(path, 0)
        try:
            with os.fdopen(fd, "wb") as out:
                await self._get(url, out, audio, ticket)
        except Unreachable as exc:
            audio.discard()
            log.info("audioUrl on %s not fetched: %s", _host(url), exc)
            raise APIError(400, UNREACHABLE) from None
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.UnsupportedProtocol, ValueError) as exc:  # ValueError: URLs httpcore cannot parse
            audio.discard()
            log.info("audioUrl on %s not fetched: %s: %s", _host(url), type(exc).__name__, exc)
            raise APIError(400, UNREACHABLE) from None
        except BaseException:
            audio.discard()
            raise
        if audio.size == 0:
            audio.discard()
            raise APIError(400, "the audio at audioUrl is empty")
        return audio

    async def _get(self, url: str, out: BinaryIO, audio: TempAudio, ticket: Ticket) -> None:
        backend = GuardedBackend(self.policy)
        async with httpcore.AsyncConnectionPool(ssl_context=self._ssl, network_backend=backend,
                                                max_connections=1) as pool:
            for _ in range(MAX_REDIRECTS + 1):
                async with pool.stream("GET", url, headers=_headers(url),
                                       extensions={"timeout": self.timeouts}) as resp:
                    if resp.status in _REDIRECTS:
                        url = _next_url(url, resp)
                        continue
                    if not 200 <= resp.status < 300:
                        raise Unreachable(f"answered HTTP {resp.status}")
                    await self._save(resp, out, audio, ticket)
                    return
        raise Unreachable(f"more than {MAX_REDIRECTS} redirects")

    async def _save(self, resp: httpcore.Response, out: BinaryIO, audio: TempAudio, ticket: Ticket) -> None:
        cap = self.max_bytes
        declared = _header(resp, b"content-length")
        reserved = int(declared) if declared and declared.isdigit() else 0
        if reserved > cap:
            raise APIError(413, f"audio at audioUrl is {reserved} bytes, more than the {cap} allowed")
        ticket.reserve_disk(reserved)
        async for chunk in resp.aiter_stream():
            audio.size += len(chunk)
            if audio.size > cap:
                raise APIError(413, f"audio at audioUrl exceeds the {cap} bytes allowed")
            if audio.size > reserved:  # no (or a wrong) Content-Length: reserve as it comes
                grow = max(audio.size - reserved, _CHUNK)
                ticket.reserve_disk(grow)
                reserved += grow
            out.write(chunk)


def _check_scheme(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise APIError(400, "audioUrl must be an http(s) URL")


def _next_url(url: str, resp: httpcore.Response) -> str:
    location = _header(resp, b"location")
    if not location:
        raise Unreachable(f"HTTP {resp.status} without a Location")
    target = urljoin(url, location)
    if urlsplit(target).scheme.lower() not in ("http", "https"):
        raise Unreachable("redirected to a non-http(s) URL")
    return target


def _headers(url: str) -> list[tuple[bytes, bytes]]:
    netloc = urlsplit(url).netloc.rpartition("@")[2]  # never forward user:password@
    return [(b"Host", netloc.encode("ascii")), (b"User-Agent", b"bulkscribe-server"),
            (b"Accept-Encoding", b"identity")]


def _header(resp: httpcore.Response, name: bytes) -> str | None:
    for key, value in resp.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
