"""Audio discovery over fsspec: local folders, S3 and anything else fsspec can list.

Discovery only discovers: storage access (filesystems, presigning, writes) is in
`tasks.storage`.

Discovery is a generator on purpose: archives hold millions of files, and the
flow should start transcribing the first ones before the listing is finished,
without ever holding the whole listing in memory.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tasks.storage import filesystem_for

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".mp3", ".wav", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".flac", ".webm", ".mp4")

# S3's own maximum page; a named constant so tests can exercise paging with few objects.
S3_PAGE_SIZE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)  # slots: ~100 B less per file when a caller keeps them
class AudioFile:
    """One discovered file. ``fingerprint`` lets later runs skip files they
    already transcribed without reading a byte: it comes from listing metadata
    and changes whenever the content does."""

    url: str
    size: int
    modified: datetime | None
    fingerprint: str

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]


@dataclass(frozen=True)
class DiscoveryFilter:
    """Which files a run picks up.

    Glob semantics (include/exclude), chosen to match what people type into a
    config file: patterns are matched against the path relative to the source
    root with "/" separators; ``*`` and ``?`` stay inside one path segment,
    ``**`` crosses segments and ``**/`` also matches zero directories; a pattern
    without any "/" is matched against the basename at any depth (so ``*.wav``
    and ``*draft*`` do the obvious thing), and a leading "/" anchors a
    single-segment pattern at the root. Matching is case-sensitive; the
    extension list is not, because recorders write ``.WAV`` and ``.wav`` alike.
    Naive datetimes are taken as UTC.
    """

    extensions: tuple[str, ...] = AUDIO_EXTENSIONS
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    modified_since: datetime | None = None
    modified_before: datetime | None = None
    max_files: int | None = None


# --------------------------------------------------------------------------- helpers


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _from_ns(ns: int) -> datetime:
    # Exact (no float rounding) and about twice as fast as fromtimestamp().replace(),
    # which matters at one call per file.
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob with ``**`` support (fnmatch has no notion of segments)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            if j - i >= 2:
                at_segment_start = i == 0 or pattern[i - 1] == "/"
                if at_segment_start and j < n and pattern[j] == "/":
                    out.append("(?:.*/)?")
                    j += 1
                else:
                    out.append(".*")
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j].replace("\\", "\\\\")
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class _Matcher:
    """A DiscoveryFilter compiled once per discover() call (patterns, tz, lowercase)."""

    def __init__(self, filt: DiscoveryFilter) -> None:
        exts = []
        for ext in filt.extensions:
            ext = ext.lower()
            exts.append(ext if ext.startswith(".") else "." + ext)
        self.extensions = tuple(exts)
        self.include = [self._compile(p) for p in filt.include]
        self.exclude = [self._compile(p) for p in filt.exclude]
        self.since = _utc(filt.modified_since)
        self.before = _utc(filt.modified_before)
        self.max_files = filt.max_files
        if self.max_files is not None and self.max_files < 0:
            raise ValueError("max_files must be >= 0")

    @staticmethod
    def _compile(pattern: str) -> tuple[bool, re.Pattern[str]]:
        if pattern.startswith("/"):
            return False, _glob_to_regex(pattern.lstrip("/"))
        return "/" not in pattern, _glob_to_regex(pattern)

    @staticmethod
    def _hit(patterns: list[tuple[bool, re.Pattern[str]]], rel: str, base: str) -> bool:
        return any(rx.match(base if on_base else rel) for on_base, rx in patterns)

    @property
    def has_window(self) -> bool:
        return self.since is not None or self.before is not None

    def path_ok(self, rel: str, base: str) -> bool:
        """Cheap checks that need no stat/metadata, so they run first."""
        if not base.lower().endswith(self.extensions):
            return False
        if self.include and not self._hit(self.include, rel, base):
            return False
        return not (self.exclude and self._hit(self.exclude, rel, base))

    def time_ok(self, modified: datetime | None) -> bool:
        if not self.has_window:
            return True
        if modified is None:
            # Without a timestamp we cannot prove the file is in the window; a
            # time-bounded run must not silently pick up everything.
            return False
        if self.since is not None and modified < self.since:
            return False
        return not (self.before is not None and modified >= self.before)


def _is_hidden(rel: str) -> bool:
    return rel.startswith(".") or "/." in rel


# --------------------------------------------------------------------------- discovery


def discover(
    source: str,
    filt: DiscoveryFilter = DiscoveryFilter(),
    storage_options: dict | None = None,
) -> Iterator[AudioFile]:
    """Yield audio files under ``source`` one by one, in a stable order.

    A URL naming a single file yields that file regardless of the filter:
    the user pointed at it explicitly, and dropping it silently would look
    like a successful empty run.
    """
    matcher = _Matcher(filt)
    fs, root = filesystem_for(source, storage_options)
    if matcher.max_files == 0:
        return
    if isinstance(fs, LocalFileSystem):
        files: Generator[AudioFile, None, None] = _discover_local(root, matcher)
    elif _is_s3(fs):
        files = _discover_s3(fs, root, matcher)
    else:
        files = _discover_generic(fs, root, matcher)
    if matcher.max_files is None:
        yield from files
    else:
        yield from islice(files, matcher.max_files)
        files.close()  # stop listing now, not when the generator is collected


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocols)


def _local_file(path: str, st: os.stat_result) -> AudioFile:
    return AudioFile(
        url=path,
        size=st.st_size,
        modified=_from_ns(st.st_mtime_ns),
        fingerprint=f"local:{st.st_size}:{st.st_mtime_ns}",
    )


def _broken_link(path: str) -> AudioFile:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return AudioFile(url=path, size=0, modified=None, fingerprint=f"broken-link:{target}")


def _scan_sorted(path: str) -> list[os.DirEntry[str]] | None:
    """One directory, sorted in reverse so the walker can pop() and free entries as it goes."""
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as exc:
        logger.warning("skipping unreadable directory %s: %s", path, exc)
        return None
    entries.sort(key=lambda e: e.name, reverse=True)
    return entries


def _discover_local(root: str, m: _Matcher) -> Generator[AudioFile, None, None]:
    """Depth-first scandir walk: memory is bounded by the directories on the
    current path, not by the size of the tree. Directory symlinks are followed,
    with a guard against loops, because audio archives are often assembled
    from symlinked mounts."""
    st = os.stat(root)  # a missing root is a configuration error: let it raise
    if not stat.S_ISDIR(st.st_mode):
        yield _local_file(root, st)
        return
    entries = _scan_sorted(root)
    if entries is None:
        return
    root_id = (st.st_dev, st.st_ino)
    path_ok, time_ok, has_window = m.path_ok, m.time_ok, m.has_window  # hot loop: skip lookups
    stack: list[tuple[str, list[os.DirEntry[str]], tuple[int, int]]] = [("", entries, root_id)]
    on_path = {root_id}
    while stack:
        rel_dir, entries, dir_id = stack[-1]
        if not entries:
            stack.pop()
            on_path.discard(dir_id)
            continue
        entry = entries.pop()
        rel = rel_dir + entry.name
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError as exc:  # e.g. a symlink loop
            logger.warning("unreadable entry %s: %s", entry.path, exc)
            is_dir = is_file = False
        if is_dir:
            try:
                dst = entry.stat()
            except OSError as exc:
                logger.warning("skipping unreadable directory %s: %s", entry.path, exc)
                continue
            sub_id = (dst.st_dev, dst.st_ino)
            if sub_id in on_path:
                logger.warning("skipping directory symlink loop at %s", entry.path)
                continue
            sub = _scan_sorted(entry.path)
            if sub:
                stack.append((rel + "/", sub, sub_id))
                on_path.add(sub_id)
            continue
        if not is_file:
            if entry.is_symlink() and path_ok(rel, entry.name) and not has_window:
                # An audio name pointing nowhere is reported (a failure row says so), not skipped.
                yield _broken_link(entry.path)
            continue
        if not path_ok(rel, entry.name):
            continue
        try:
            fst = entry.stat()
        except OSError as exc:
            logger.warning("skipping unreadable file %s: %s", entry.path, exc)
            continue
        # _local_file inlined: this line runs once per file.
        mtime_ns = fst.st_mtime_ns
        item = AudioFile(
            entry.path,
            fst.st_size,
            _EPOCH + timedelta(microseconds=mtime_ns // 1000),
            f"local:{fst.st_size}:{mtime_ns}",
        )
        if not has_window or time_ok(item.modified):
            yield item


def _discover_s3(fs: Any, root: str, m: _Matcher) -> Generator[AudioFile, None, None]:
    """Flat ListObjectsV2 paging, one page (<= 1000 keys) in memory at a time.

    s3fs's find/walk build the complete listing before returning, so we page
    ourselves through ``call_s3``, which keeps s3fs's retries, credentials and
    requester-pays handling. A flat listing (no delimiter) is also the fewest
    requests, and S3 returns keys in lexicographic order, which is our order.
    """
    bucket, key, _ = fs.split_path(root)
    if not bucket:
        raise ValueError(f"S3 source needs a bucket: {root!r}")
    if key and not key.endswith("/"):
        try:
            head = fs.call_s3("head_object", Bucket=bucket, Key=key)
        except (FileNotFoundError, PermissionError):
            # S3 answers 403 instead of 404 for a missing key when ListBucket is
            # not granted; the listing below then gives the meaningful error.
            pass
        else:
            yield _s3_file(bucket, key, head["ContentLength"], head.get("LastModified"), head.get("ETag"))
            return
    prefix = key.rstrip("/") + "/" if key else ""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": S3_PAGE_SIZE}
    while True:
        page = fs.call_s3("list_objects_v2", **kwargs)
        for obj in page.get("Contents", ()):
            obj_key = obj["Key"]
            rel = obj_key[len(prefix) :]
            if not rel or rel.endswith("/") or _is_hidden(rel) or not m.path_ok(rel, rel.rpartition("/")[2]):
                continue
            item = _s3_file(bucket, obj_key, obj["Size"], obj.get("LastModified"), obj.get("ETag"))
            if m.time_ok(item.modified):
                yield item
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def _s3_file(bucket: str, key: str, size: int, modified: datetime | None, etag: str | None) -> AudioFile:
    modified = _utc(modified)
    if etag:
        fingerprint = "etag:" + etag.strip('"')
    else:  # some S3 clones omit ETag in listings
        stamp = modified.isoformat() if modified else ""
        fingerprint = f"s3:{size}:{stamp}"
    return AudioFile(url=f"s3://{bucket}/{key}", size=int(size), modified=modified, fingerprint=fingerprint)


# Keys other fsspec backends use for content hashes, then for version tags: a
# hash only changes with the bytes, an etag/generation may also change with metadata.
_FINGERPRINT_KEYS = ("checksum", "md5Hash", "content_md5", "md5", "crc32c", "ETag", "etag", "generation")
_MTIME_KEYS = ("LastModified", "last_modified", "mtime", "updated", "modified", "created")


def _info_mtime(info: dict[str, Any]) -> datetime | None:
    for k in _MTIME_KEYS:
        value = info.get(k)
        if value is None:
            continue
        if isinstance(value, datetime):
            return _utc(value)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str):
            try:
                return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                continue
    return None


def _generic_file(fs: fsspec.AbstractFileSystem, info: dict[str, Any]) -> AudioFile:
    modified = _info_mtime(info)
    size = int(info.get("size") or 0)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    fingerprint = None
    for k in _FINGERPRINT_KEYS:
        value = info.get(k)
        if value not in (None, ""):
            fingerprint = f"{k.lower()}:{str(value).strip(chr(34))}"
            break
    if fingerprint is None:
        fingerprint = f"{protocol}:{size}:{modified.isoformat() if modified else ''}"
    return AudioFile(url=fs.unstrip_protocol(info["name"]), size=size, modified=modified, fingerprint=fingerprint)


def _discover_generic(fs: fsspec.AbstractFileSystem, root: str, m: _Matcher) -> Generator[AudioFile, None, None]:
    """Directory-by-directory walk for the other fsspec backends (one ``ls`` in memory per level)."""
    info = fs.info(root)
    if info.get("type") != "directory":
        yield _generic_file(fs, info)
        return
    base = root.rstrip("/") + "/"

    def listing(path: str) -> list[dict[str, Any]] | None:
        try:
            items = fs.ls(path, detail=True)
        except (OSError, ValueError) as exc:
            logger.warning("skipping unreadable directory %s: %s", path, exc)
            return None
        items = [i for i in items if not i["name"].rstrip("/").rsplit("/", 1)[-1].startswith(".")]
        items.sort(key=lambda i: i["name"], reverse=True)
        return items

    stack = [listing(root) or []]
    while stack:
        if not stack[-1]:
            stack.pop()
            continue
        item = stack[-1].pop()
        name = item["name"].rstrip("/")
        if name == root.rstrip("/"):
            continue
        rel = name[len(base) :] if name.startswith(base) else name.rsplit("/", 1)[-1]
        if item.get("type") == "directory":
            sub = listing(name)
            if sub:
                stack.append(sub)
            continue
        if not m.path_ok(rel, rel.rpartition("/")[2]):
            continue
        audio = _generic_file(fs, item)
        if m.time_ok(audio.modified):
            yield audio
