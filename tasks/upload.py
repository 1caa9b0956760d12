"""How a file travels to the API: the upload plan, chosen by size and place.

<= the direct limit: multipart upload. Larger, in object storage (<= 500 MB): a presigned
URL of short expiry. Larger and local: a staging bucket + presigned URL when one is
configured, else re-encoded to 16 kHz mono Opus when that fits the direct limit, else
chunks cut at silences. Over 500 MB anywhere: chunks.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from stt import errors
from tasks import audio_prep, storage
from tasks.discovery import AudioFile
from tasks.identity import content_id, stream_content_id


@dataclass(frozen=True)
class UploadPolicy:
    """The limits and places that decide a file's upload mode."""

    max_direct_upload_bytes: int
    max_url_bytes: int
    staging_url: str | None = None
    presign_expires_s: int = 900
    chunk_seconds: float = 600.0
    #: Seconds each chunk shares with the previous one: what both transcribe there ties
    #: their speakers together (diarized files only; 0 otherwise).
    chunk_overlap_s: float = 0.0
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: Local files under `served_root` that the API fetches from `served_url` (see Endpoint).
    served_root: str | None = None
    served_url: str | None = None

    def served(self, path: str) -> str | None:
        """The URL the API can fetch a local file from, if any."""
        if not self.served_root or not self.served_url or storage.is_remote(path):
            return None
        rel = os.path.relpath(os.path.abspath(path), self.served_root)
        if rel.startswith("..") or os.path.isabs(rel):
            return None
        return self.served_url + quote(rel.replace(os.sep, "/"))


@dataclass
class Unit:
    """What one request carries: bytes for a direct upload, or a URL the API fetches.

    `start_s`/`end_s` place a chunk in the file (0/None for a whole file)."""

    index: int
    start_s: float
    end_s: float | None
    data: bytes | None = None
    url: str | None = None
    name: str | None = None
    #: Where the part of the file this unit stands for begins (chunks that overlap).
    own_start_s: float = 0.0


@dataclass
class UploadPlan:
    mode: str  # direct | url | staged | reencode | chunks
    #: The plan's request(s); chunks are produced lazily, one in memory at a time.
    units: Callable[[], Iterator[Unit]]
    single: bool = True
    duration_s: float | None = None
    estimated_cost: float | None = None
    #: Removes what the plan left behind (a staged copy); None when there is nothing.
    cleanup: Callable[[], None] | None = None
    #: What the audio is (`tasks.identity`): a hash of its bytes, or the S3 ETag of an
    #: object sent by URL; None in a dry run, which reads no large file whole.
    content: str | None = None


def plan_upload(f: AudioFile, policy: UploadPolicy, *, price_per_min: float | None,
                dry_run: bool = False, probe: bool = True) -> UploadPlan:
    """Choose how `f` travels, and learn what its content is (blocking: run it in a thread)."""

    def cost(duration_s: float | None) -> float | None:
        return None if duration_s is None or price_per_min is None else duration_s / 60.0 * price_per_min

    if f.size <= policy.max_direct_upload_bytes:
        data = storage.read_bytes(f.url, policy.storage_options)
        duration = _probe_or_none(data) if probe else None
        return UploadPlan("direct", lambda: iter([Unit(0, 0.0, None, data=data)]), duration_s=duration,
                          estimated_cost=cost(duration), content=content_id(data))

    duration = _probe_large(f, policy)
    content = None if dry_run else _large_content(f, policy)
    fits_url = f.size <= policy.max_url_bytes
    url = (_presigned(f.url, policy) if storage.is_remote(f.url) else policy.served(f.url)) if fits_url else None
    if url:
        return UploadPlan("url", lambda: iter([Unit(0, 0.0, None, url=url)]), duration_s=duration,
                          estimated_cost=cost(duration), content=content)
    if fits_url and policy.staging_url:
        if dry_run or content is None:
            return UploadPlan("staged", lambda: iter(()), duration_s=duration, estimated_cost=cost(duration))
        return _staged(f, policy, content, duration, cost(duration))
    if audio_prep.estimated_reencoded_bytes(duration) < policy.max_direct_upload_bytes:
        return UploadPlan("reencode", lambda: _reencoded(f, policy), duration_s=duration,
                          estimated_cost=cost(duration), content=content)
    return UploadPlan("chunks", lambda: _chunks(f, policy), single=False, duration_s=duration,
                      estimated_cost=cost(duration), content=content)


def _large_content(f: AudioFile, policy: UploadPolicy) -> str:
    """A large S3 object is named by its ETag (a hash S3 computed of its content: it is
    not downloaded just to hash it); other large files are hashed in one streaming pass."""
    if f.fingerprint.startswith("etag:"):
        return f.fingerprint
    fs, path = storage.filesystem_for(f.url, policy.storage_options)
    with fs.open(path, "rb") as fh:
        return stream_content_id(fh)


def _probe_or_none(data: bytes) -> float | None:
    try:
        return audio_prep.probe(io.BytesIO(data)).duration_s
    except audio_prep.AudioPrepError:
        return None  # let the API say what is wrong with it


def _probe_large(f: AudioFile, policy: UploadPolicy) -> float:
    fs, path = storage.filesystem_for(f.url, policy.storage_options)
    with fs.open(path, "rb") as fh:
        try:
            return audio_prep.probe(fh).duration_s
        except audio_prep.AudioPrepError as exc:
            raise errors.BadRequest(f"cannot read the audio of this large file: {exc}") from None


def _presigned(url: str, policy: UploadPolicy) -> str | None:
    try:
        return storage.presign(url, policy.presign_expires_s, policy.storage_options)
    except ValueError:
        return None


def _staged(f: AudioFile, policy: UploadPolicy, content: str, duration: float, cost: float | None) -> UploadPlan:
    assert policy.staging_url is not None
    staged = storage.join(policy.staging_url, content.split(":")[-1] + _ext(f.name))
    storage.copy(f.url, staged, policy.storage_options)
    url = storage.presign(staged, policy.presign_expires_s, policy.storage_options)
    return UploadPlan("staged", lambda: iter([Unit(0, 0.0, None, url=url)]), duration_s=duration,
                      estimated_cost=cost, cleanup=lambda: storage.remove(staged, policy.storage_options),
                      content=content)


def _reencoded(f: AudioFile, policy: UploadPolicy) -> Iterator[Unit]:
    fs, path = storage.filesystem_for(f.url, policy.storage_options)
    with fs.open(path, "rb") as fh:
        data = audio_prep.reencode(fh)
    if len(data) > policy.max_direct_upload_bytes:  # the estimate is an upper bound; belt and braces
        raise audio_prep.AudioPrepError(
            f"re-encoded audio is {len(data)} bytes, still over the {policy.max_direct_upload_bytes}-byte limit")
    yield Unit(0, 0.0, None, data=data, name=_stem(f.name) + ".ogg")


def _chunks(f: AudioFile, policy: UploadPolicy) -> Iterator[Unit]:
    fs, path = storage.filesystem_for(f.url, policy.storage_options)
    with fs.open(path, "rb") as fh:
        for c in audio_prep.split_at_silences(fh, max_chunk_s=policy.chunk_seconds, overlap_s=policy.chunk_overlap_s,
                                              max_bytes=policy.max_direct_upload_bytes):
            yield Unit(c.index, c.start_s, c.end_s, data=c.data, name=f"{_stem(f.name)}.part{c.index}.ogg",
                       own_start_s=c.own_start_s)


def _ext(name: str) -> str:
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]
