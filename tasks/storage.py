"""Where bytes live: local disks, S3 and anything else fsspec opens.

Every other module reaches storage through these functions, so that filesystem
resolution (S3 endpoint and signature options), the local/remote test, presigned URLs
and the one atomic write are decided in one place.

Atomic writes: on a local disk a file is written under a dot-prefixed temporary name in
the same folder (no `*.parquet` or `*.json` glob matches it), flushed to disk and renamed
into place; on object stores an object only appears once its upload completes, so it is
written in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from typing import IO, Any

import fsspec
from fsspec.core import split_protocol, url_to_fs

from tasks import group_sync

_S3_PROTOCOLS = ("s3", "s3a")
_LOCAL_PROTOCOLS = ("file", "local")
# SigV4 caps presigned URLs at 7 days; asking for more fails only when the URL is used.
MAX_PRESIGN_S = 7 * 24 * 3600

Writer = Callable[[IO[bytes]], object]


def is_remote(url: str) -> bool:
    """True unless the URL points at the local disk.

    Chained URLs (``simplecache::s3://...``) count as remote because the data
    ultimately lives elsewhere.
    """
    protocol, _ = split_protocol(url)
    return protocol is not None and protocol not in _LOCAL_PROTOCOLS


def is_s3(url: str) -> bool:
    return split_protocol(url)[0] in _S3_PROTOCOLS


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def env_endpoint() -> str | None:
    """The S3 endpoint botocore would take from the environment, if any.

    botocore (>= 1.31, and the aiobotocore used by s3fs) already honours
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL by itself. We still read them here
    so that the value becomes part of the filesystem's constructor arguments:
    fsspec caches instances by those arguments only, and without this an
    instance built for one endpoint would be silently reused after the
    environment points somewhere else (a new test server, a new profile).
    """
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_endpoint(storage_options: dict[str, Any] | None) -> str | None:
    """The S3 endpoint a run uses: explicit options first, then the environment."""
    opts = storage_options or {}
    client_kwargs = opts.get("client_kwargs") or {}
    return opts.get("endpoint_url") or client_kwargs.get("endpoint_url") or env_endpoint()


def _s3_options(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    opts = dict(storage_options or {})
    client_kwargs = dict(opts.get("client_kwargs") or {})
    if not opts.get("endpoint_url") and not client_kwargs.get("endpoint_url"):
        endpoint = env_endpoint()
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    config_kwargs = dict(opts.get("config_kwargs") or {})
    # botocore presigns with legacy SigV2 in us-east-1 and with custom
    # endpoints; SigV2 is refused by newer regions and many S3 clones. Requests
    # themselves are SigV4 either way, so this only changes presigned URLs.
    config_kwargs.setdefault("signature_version", "s3v4")
    opts["config_kwargs"] = config_kwargs
    return opts


def filesystem_for(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem + path (protocol stripped) for a URL.

    Credentials, region and profile are left to botocore's own chain so that
    AWS_* variables, ~/.aws/config and instance roles all work unchanged;
    explicit storage_options are passed as constructor arguments and so win.
    """
    protocol, _ = split_protocol(url)
    if protocol in _S3_PROTOCOLS:
        return url_to_fs(url, **_s3_options(storage_options))
    if protocol is None:
        url = os.path.abspath(os.path.expanduser(url))
    return url_to_fs(url, **(storage_options or {}))


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole file (a local path is opened directly: fsspec's resolution would triple the
    CPU of a small read)."""
    if split_protocol(url)[0] is None:
        with open(os.path.expanduser(url), "rb") as fh:
            return fh.read()
    fs, path = filesystem_for(url, storage_options)
    with fs.open(path, "rb") as fh:
        return fh.read()


def cat(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A whole (small) file: plain open() on a local disk, where fsspec's own costs several
    times the read (more for a missing file's error)."""
    if is_local(fs):
        with open(path, "rb") as fh:
            return fh.read()
    return bytes(fs.cat_file(path))


def _temp_beside(path: str) -> str:
    """A fresh hidden temp name in `path`'s folder (created if missing), for a rename or link."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, write: Writer, *, durable: bool = False) -> None:
    """Write `path` so that readers see the whole file or nothing.

    `durable`: also fsync before the rename (the ledger needs it: its entries must
    survive a power cut; a table part can be rebuilt from the ledger).
    """
    if not is_local(fs):
        with fs.open(path, "wb") as f:
            write(f)
        return
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def link_local(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> bool:
    """Give `src`'s file a second name `dst` (no copy, no new file); False where there are
    no hard links (object stores, some network mounts) or `dst` exists."""
    return _on_local_disk(fs, lambda: os.link(src, dst))


def move_local(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> bool:
    """Rename `src` over `dst` and stamp it with the current time; False where renames are
    copies (object stores), `src` is gone or the rename fails."""

    def move() -> None:
        os.replace(src, dst)
        if os.path.lexists(src):  # two names of one file: rename(2) leaves both
            os.unlink(src)
        os.utime(dst)

    return _on_local_disk(fs, move)


def append_local(fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, max_bytes: int,
                 durable: bool = False) -> bool:
    """Append `data` to the existing file `path`, fsynced if `durable`; False where `path`
    is missing, not on a local disk, or would grow past `max_bytes`.

    Creating a file is what small writes cost (0.3-0.8 ms of CPU per file on the ext4
    measured here; an append to an existing file, microseconds)."""
    if not is_local(fs):
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size + len(data) > max_bytes:
            return False
        write_all(fd, data)
        if durable:
            group_sync.fsync(fd)  # shared with the other appenders to the file (a batch's journal)
    finally:
        os.close(fd)
    return True


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def same_local_file(fs: fsspec.AbstractFileSystem, a: str, b: str) -> bool:
    """`a` and `b` are two names of one file on a local disk (False if either is missing)."""
    if not is_local(fs):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _on_local_disk(fs: fsspec.AbstractFileSystem, step: Callable[[], None]) -> bool:
    """Run a link/rename `step` on a local disk; False on object stores or when it fails."""
    if not is_local(fs):
        return False
    try:
        step()
    except OSError:
        return False
    return True


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, durable: bool = False) -> bool:
    """Create `path` with `data` only if it does not exist; False when it does.

    Exclusive on a local disk (link(2) fails on an existing name) and on S3 (a conditional PUT, If-None-Match: *,
    which AWS S3 and most S3-compatible stores honour). Other fsspec backends get a
    check-then-write, which is not exclusive: document it where it matters.
    `durable`: fsync the data before the name appears (local disks).
    """
    if is_local(fs):
        # Written aside, then hard-linked: readers never see the file without its data (as
        # they could between an O_EXCL open and its write), and link() fails if it exists.
        tmp = _temp_beside(path)
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if any(p in _S3_PROTOCOLS for p in protocols):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


def copy(src_url: str, dst_url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Stream one object to another place (e.g. a local file to a staging bucket)."""
    sfs, spath = filesystem_for(src_url, storage_options)
    dfs, dpath = filesystem_for(dst_url, storage_options)
    with sfs.open(spath, "rb") as src, dfs.open(dpath, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 * 1024 * 1024)


def remove(url: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem_for(url, storage_options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def presign(file_url: str, expires_s: int = 900, storage_options: dict[str, Any] | None = None) -> str:
    """A time-limited GET URL, so the STT API can fetch the object itself
    instead of bulkscribe streaming the bytes through. The URL is a bearer
    credential: callers must not log it."""
    if not 1 <= expires_s <= MAX_PRESIGN_S:
        raise ValueError(f"expires_s must be between 1 and {MAX_PRESIGN_S}")
    protocol, _ = split_protocol(file_url)
    if protocol not in _S3_PROTOCOLS:
        raise ValueError(f"cannot presign {protocol or 'local'} paths; only S3 objects can be presigned")
    fs, path = filesystem_for(file_url, storage_options)
    _, key, _ = fs.split_path(path)
    if not key or key.endswith("/"):
        raise ValueError("presign needs an object URL, not a bucket or prefix")
    return str(fs.url(path, expires=expires_s))
