"""Fetching an `audioUrl`: streamed to a private temp file, never held whole in memory."""

from __future__ import annotations

import os

import httpx

from stt.server.errors import APIError
from stt.server.tempfiles import TempAudio, new_temp_file


class Downloader:
    def __init__(self, max_bytes: int, read_timeout_s: float) -> None:
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def fetch(self, url: str) -> TempAudio:
        """The audio at `url` in a temp file; 413 past the cap, 400 when it cannot be fetched."""
        if not url.lower().startswith(("http://", "https://")):
            raise APIError(400, "audioUrl must be an http(s) URL")
        cap = self.max_bytes
        fd, path = new_temp_file("bulkscribe-url-")
        audio = TempAudio(path, 0)
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=self.read_timeout_s),
                                         follow_redirects=True, trust_env=False) as http:
                async with http.stream("GET", url) as resp:
                    if resp.status_code >= 400:
                        raise APIError(400, f"could not download audioUrl: the URL answered HTTP {resp.status_code}")
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > cap:
                        raise APIError(413, f"audio at audioUrl is {int(declared)} bytes, more than the {cap} allowed")
                    with os.fdopen(fd, "wb") as out:
                        fd = -1
                        async for chunk in resp.aiter_bytes(1 << 20):
                            audio.size += len(chunk)
                            if audio.size > cap:
                                raise APIError(413, f"audio at audioUrl exceeds the {cap} bytes allowed")
                            out.write(chunk)
        except httpx.HTTPError as exc:
            audio.discard()
            raise APIError(400, f"could not download audioUrl: {type(exc).__name__}") from None
        except BaseException:
            audio.discard()
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        if audio.size == 0:
            audio.discard()
            raise APIError(400, "the audio at audioUrl is empty")
        return audio
