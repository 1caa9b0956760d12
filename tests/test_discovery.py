"""tasks.discovery and tasks.storage against real servers: a moto S3 server over HTTP and real temp dirs.

Nothing is mocked: listing, ETags, LastModified and presigned URLs all come
from the moto server, so these tests catch s3fs/botocore behaviour changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import httpx
import pytest

from tasks import discovery
from tasks.discovery import AUDIO_EXTENSIONS, AudioFile, DiscoveryFilter, discover
from tasks.storage import filesystem_for, is_remote, presign
from tests.conftest import free_port, isolate_aws

@pytest.fixture(scope="module")
def s3_client(s3_server: str, tmp_path_factory: pytest.TempPathFactory):
    """Independent of the code under test, to seed buckets."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_aws(mp, str(tmp_path_factory.mktemp("aws")))  # a stray AWS_PROFILE must not break setup
        return boto3.client(
            "s3",
            endpoint_url=s3_server,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"bs-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def _touch(path, data: bytes = b"x", mtime: datetime | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        ts = mtime.timestamp()
        os.utime(path, (ts, ts))


@pytest.fixture
def local_tree(tmp_path):
    root = tmp_path / "audio"
    for rel in (
        "a.wav",
        "B.MP3",
        "notes.txt",
        ".hidden.wav",
        ".git/x.wav",
        "sub/c.flac",
        "sub/f.wav",
        "sub/deeper/d.ogg",
        "sub/e.wav.bak",
        "sub/.cache/y.opus",
    ):
        _touch(root / rel, rel.encode())
    return root


def _rel(files: list[AudioFile], root: str) -> list[str]:
    prefix = root.rstrip("/") + "/"
    assert all(f.url.startswith(prefix) for f in files), [f.url for f in files]
    return [f.url[len(prefix) :] for f in files]


S3_KEYS = (
    "audio/a.wav",
    "audio/B.MP3",
    "audio/notes.txt",
    "audio/.hidden.wav",
    "audio/.cache/x.wav",
    "audio/sub/c.flac",
    "audio/sub/f.wav",
    "audio/sub/deeper/d.ogg",
    "audio/sub/e.wav.bak",
    "audio/marker/",  # "directory" placeholder written by consoles
    "audio2/sibling.wav",  # shares the prefix string but not the folder
    "other/z.wav",
)


@pytest.fixture(scope="module")
def s3_tree(s3_client):
    """Read-only bucket shared by the listing tests (seeded once: each PUT costs a round trip)."""
    name = f"bs-tree-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=name)
    for key in S3_KEYS:
        s3_client.put_object(Bucket=name, Key=key, Body=key.encode())
    return name


EXPECTED = ["B.MP3", "a.wav", "sub/c.flac", "sub/deeper/d.ogg", "sub/f.wav"]


# --------------------------------------------------------------------------- local


def test_local_extensions_recursion_hidden_and_order(local_tree):
    files = list(discover(str(local_tree)))
    # sorted within each directory (code point order, so "B" < "a"), depth first
    assert _rel(files, str(local_tree)) == EXPECTED
    a = files[1]
    st = os.stat(local_tree / "a.wav")
    assert a.url == str(local_tree / "a.wav")
    assert a.name == "a.wav"
    assert a.size == len(b"a.wav")
    assert a.modified is not None and a.modified.tzinfo is not None
    assert a.modified.utcoffset() == timedelta(0)
    assert a.fingerprint == f"local:{st.st_size}:{st.st_mtime_ns}"
    assert list(discover(f"file://{local_tree}")) == files


def test_local_extension_filter_custom(local_tree):
    files = list(discover(str(local_tree), DiscoveryFilter(extensions=("MP3", ".Ogg"))))
    assert _rel(files, str(local_tree)) == ["B.MP3", "sub/deeper/d.ogg"]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (("*.wav",), (), ["a.wav", "sub/f.wav"]),  # no "/" -> basename at any depth
        (("/*.wav",), (), ["a.wav"]),  # leading "/" anchors at the root
        (("sub/**",), (), ["sub/c.flac", "sub/deeper/d.ogg", "sub/f.wav"]),
        (("sub/*",), (), ["sub/c.flac", "sub/f.wav"]),  # "*" stays in one segment
        (("sub/**/*.ogg", "sub/**/*.flac"), (), ["sub/c.flac", "sub/deeper/d.ogg"]),  # "**/" = 0+ dirs
        (("**/d.ogg",), (), ["sub/deeper/d.ogg"]),
        ((), ("**/deeper/**",), ["B.MP3", "a.wav", "sub/c.flac", "sub/f.wav"]),
        (("sub/**",), ("*.wav",), ["sub/c.flac", "sub/deeper/d.ogg"]),
        (("[aB].*",), (), ["B.MP3", "a.wav"]),
        (("?.wav",), (), ["a.wav", "sub/f.wav"]),
    ],
)
def test_local_include_exclude(local_tree, include, exclude, expected):
    filt = DiscoveryFilter(include=include, exclude=exclude)
    assert _rel(list(discover(str(local_tree), filt)), str(local_tree)) == expected


def test_local_modified_window(tmp_path):
    t0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    for i in range(4):
        _touch(tmp_path / f"{i}.wav", mtime=t0 + timedelta(hours=i))

    def names(**kw):
        return [f.name for f in discover(str(tmp_path), DiscoveryFilter(**kw))]

    assert names(modified_since=t0 + timedelta(hours=1)) == ["1.wav", "2.wav", "3.wav"]  # inclusive
    assert names(modified_before=t0 + timedelta(hours=2)) == ["0.wav", "1.wav"]  # exclusive
    assert names(modified_since=t0 + timedelta(hours=1), modified_before=t0 + timedelta(hours=3)) == ["1.wav", "2.wav"]
    # naive datetimes are UTC; other zones are converted
    assert names(modified_since=datetime(2024, 5, 1, 14, 0, 0)) == ["2.wav", "3.wav"]
    cest = timezone(timedelta(hours=2))
    assert names(modified_since=datetime(2024, 5, 1, 16, 0, 0, tzinfo=cest)) == ["2.wav", "3.wav"]
    assert next(discover(str(tmp_path))).modified == t0


def test_local_max_files(local_tree):
    assert _rel(list(discover(str(local_tree), DiscoveryFilter(max_files=3))), str(local_tree)) == EXPECTED[:3]
    assert list(discover(str(local_tree), DiscoveryFilter(max_files=0))) == []


def test_local_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "talk.wav"
    f.write_bytes(b"first take")
    fp1 = next(discover(str(tmp_path))).fingerprint
    assert next(discover(str(tmp_path))).fingerprint == fp1  # stable when untouched
    time.sleep(0.02)  # kernel timestamps are jiffy-granular
    f.write_bytes(b"other take")  # same size
    fp2 = next(discover(str(tmp_path))).fingerprint
    f.write_bytes(b"a longer third take")
    fp3 = next(discover(str(tmp_path))).fingerprint
    assert len({fp1, fp2, fp3}) == 3


def test_local_single_file(local_tree):
    only = list(discover(str(local_tree / "sub" / "c.flac")))
    assert [f.url for f in only] == [str(local_tree / "sub" / "c.flac")]
    # explicitly named files bypass the filter
    assert [f.name for f in discover(str(local_tree / "notes.txt"))] == ["notes.txt"]


def test_local_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(discover(str(tmp_path / "nope")))


def test_local_broken_symlinks_are_reported_and_directory_loops_skipped(tmp_path, caplog):
    _touch(tmp_path / "real.wav")
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    (tmp_path / "selfloop.wav").symlink_to(tmp_path / "selfloop.wav")
    (tmp_path / "link.wav").symlink_to(tmp_path / "real.wav")
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")  # not audio: not reported
    (tmp_path / "d").mkdir()
    _touch(tmp_path / "d" / "in.wav")
    (tmp_path / "d" / "up").symlink_to(tmp_path, target_is_directory=True)  # cycle
    with caplog.at_level(logging.WARNING, logger="tasks.discovery"):
        found = list(discover(str(tmp_path)))
    assert _rel(found, str(tmp_path)) == ["d/in.wav", "dangling.wav", "link.wav", "real.wav", "selfloop.wav"]
    broken = {f.name: f.fingerprint for f in found if f.fingerprint.startswith("broken-link:")}
    assert broken == {"dangling.wav": f"broken-link:{tmp_path / 'gone.wav'}",
                      "selfloop.wav": f"broken-link:{tmp_path / 'selfloop.wav'}"}
    assert "loop" in caplog.text
    # A date window cannot prove a dangling link is in it: it is left out.
    windowed = discover(str(tmp_path), DiscoveryFilter(modified_since=datetime(2000, 1, 1, tzinfo=timezone.utc)))
    assert not [f for f in windowed if f.fingerprint.startswith("broken-link:")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_local_unreadable_dir_is_skipped(tmp_path, caplog):
    _touch(tmp_path / "ok.wav")
    locked = tmp_path / "locked"
    _touch(locked / "secret.wav")
    locked.chmod(0)
    try:
        with caplog.at_level(logging.WARNING, logger="tasks.discovery"):
            assert [f.name for f in discover(str(tmp_path))] == ["ok.wav"]
        assert "locked" in caplog.text
    finally:
        locked.chmod(0o755)


def test_generic_fsspec_backend_memory():
    """Backends other than local/S3 go through the ls-based walker."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/bs-{uuid.uuid4().hex[:8]}"
    try:
        for rel in ("b.wav", "a.txt", ".h.wav", "s/c.mp3"):
            fs.pipe(f"{root}/{rel}", b"data")
        files = list(discover(f"memory://{root}"))
        assert [f.url for f in files] == [f"memory://{root}/b.wav", f"memory://{root}/s/c.mp3"]
        assert all(f.size == 4 and f.fingerprint for f in files)
    finally:
        fs.rm(root, recursive=True)


def test_is_remote():
    assert is_remote("s3://b/k.wav")
    assert is_remote("simplecache::s3://b/k.wav")
    assert not is_remote("/data/a.wav")
    assert not is_remote("relative/a.wav")
    assert not is_remote("file:///data/a.wav")


def test_presign_local_raises(local_tree):
    with pytest.raises(ValueError):
        presign(str(local_tree / "a.wav"))
    with pytest.raises(ValueError):
        presign(f"file://{local_tree / 'a.wav'}")


# --------------------------------------------------------------------------- S3


def test_filesystem_for_s3_uses_env_endpoint(s3_env):
    fs, root = filesystem_for("s3://some-bucket/prefix/")
    assert root.rstrip("/") == "some-bucket/prefix"
    assert fs.s3.meta.endpoint_url == s3_env


def test_s3_extensions_recursion_hidden_and_order(s3_env, s3_tree):
    files = list(discover(f"s3://{s3_tree}/audio"))
    assert _rel(files, f"s3://{s3_tree}/audio") == EXPECTED
    a = files[1]
    assert a.url == f"s3://{s3_tree}/audio/a.wav" and a.name == "a.wav"
    assert a.size == len(b"audio/a.wav")
    assert a.fingerprint == "etag:" + hashlib.md5(b"audio/a.wav").hexdigest()
    assert a.modified is not None and a.modified.utcoffset() == timedelta(0)
    # trailing slash and whole bucket
    assert list(discover(f"s3://{s3_tree}/audio/")) == files
    whole = _rel(list(discover(f"s3://{s3_tree}")), f"s3://{s3_tree}")
    assert whole == ["audio/" + r for r in EXPECTED] + ["audio2/sibling.wav", "other/z.wav"]


def test_s3_paging(s3_env, s3_tree, monkeypatch):
    monkeypatch.setattr(discovery, "S3_PAGE_SIZE", 2)  # real paging with a handful of keys
    files = list(discover(f"s3://{s3_tree}/audio"))
    assert _rel(files, f"s3://{s3_tree}/audio") == EXPECTED


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (("*.wav",), (), ["a.wav", "sub/f.wav"]),
        (("sub/**",), ("**/deeper/**",), ["sub/c.flac", "sub/f.wav"]),
        (("sub/**/*.ogg",), (), ["sub/deeper/d.ogg"]),
    ],
)
def test_s3_include_exclude(s3_env, s3_tree, include, exclude, expected):
    filt = DiscoveryFilter(include=include, exclude=exclude)
    assert _rel(list(discover(f"s3://{s3_tree}/audio", filt)), f"s3://{s3_tree}/audio") == expected


def test_s3_modified_window(s3_env, s3_client, bucket):
    # S3 LastModified has 1 s resolution: put the two objects in different seconds.
    s3_client.put_object(Bucket=bucket, Key="old.wav", Body=b"1")
    time.sleep(1.05 - (time.time() % 1))
    s3_client.put_object(Bucket=bucket, Key="new.wav", Body=b"2")
    stamps = {f.name: f.modified for f in discover(f"s3://{bucket}")}
    assert stamps["old.wav"] < stamps["new.wav"]

    def names(**kw):
        return [f.name for f in discover(f"s3://{bucket}", DiscoveryFilter(**kw))]

    assert names(modified_since=stamps["new.wav"]) == ["new.wav"]  # inclusive
    assert names(modified_before=stamps["new.wav"]) == ["old.wav"]  # exclusive
    assert names(modified_since=stamps["old.wav"], modified_before=stamps["new.wav"]) == ["old.wav"]
    assert names(modified_since=stamps["new.wav"] + timedelta(seconds=1)) == []


def test_s3_max_files(s3_env, s3_tree, monkeypatch):
    monkeypatch.setattr(discovery, "S3_PAGE_SIZE", 2)
    got = list(discover(f"s3://{s3_tree}/audio", DiscoveryFilter(max_files=3)))
    assert _rel(got, f"s3://{s3_tree}/audio") == EXPECTED[:3]


def test_s3_fingerprint_changes_with_content(s3_env, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="t.wav", Body=b"first take")
    fp1 = next(discover(f"s3://{bucket}")).fingerprint
    s3_client.put_object(Bucket=bucket, Key="t.wav", Body=b"other take")  # same size, same second
    fp2 = next(discover(f"s3://{bucket}")).fingerprint
    assert fp1 == "etag:" + hashlib.md5(b"first take").hexdigest()
    assert fp2 == "etag:" + hashlib.md5(b"other take").hexdigest()


def test_s3_single_file(s3_env, s3_tree):
    got = list(discover(f"s3://{s3_tree}/audio/sub/c.flac"))
    assert [f.url for f in got] == [f"s3://{s3_tree}/audio/sub/c.flac"]
    assert got[0].fingerprint == "etag:" + hashlib.md5(b"audio/sub/c.flac").hexdigest()
    assert got[0].size == len(b"audio/sub/c.flac")
    # same record as the listing gives
    assert got[0] in list(discover(f"s3://{s3_tree}/audio"))


def test_s3_presign_downloads_identical_bytes(s3_env, s3_client, bucket):
    payload = os.urandom(200_000)
    s3_client.put_object(Bucket=bucket, Key="dir/clip.wav", Body=payload)
    url = presign(f"s3://{bucket}/dir/clip.wav", expires_s=120)
    assert url.startswith(s3_env) and "X-Amz-Signature=" in url  # SigV4
    resp = httpx.get(url, trust_env=False, timeout=10)
    assert resp.status_code == 200
    assert resp.content == payload
    # (moto does not verify signatures by default, so a tampered URL would pass too.)


def test_presign_rejects_bad_requests(s3_env):
    with pytest.raises(ValueError):
        presign("s3://bucket-only")
    with pytest.raises(ValueError):
        presign("s3://b/k.wav", expires_s=8 * 24 * 3600)


def test_explicit_storage_options_without_env(s3_server, s3_client, bucket, monkeypatch, tmp_path):
    isolate_aws(monkeypatch, str(tmp_path))  # no AWS_* at all
    s3_client.put_object(Bucket=bucket, Key="x/one.wav", Body=b"one")
    opts = {
        "endpoint_url": s3_server,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    assert [f.name for f in discover(f"s3://{bucket}/x", storage_options=opts)] == ["one.wav"]
    url = presign(f"s3://{bucket}/x/one.wav", storage_options=opts)
    assert httpx.get(url, trust_env=False, timeout=10).content == b"one"


def test_explicit_storage_options_win_over_env(s3_server, s3_client, bucket, monkeypatch, tmp_path):
    isolate_aws(monkeypatch, str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    s3_client.put_object(Bucket=bucket, Key="two.wav", Body=b"two")
    opts = {
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"},
        "key": "testing",
        "secret": "testing",
    }
    assert [f.name for f in discover(f"s3://{bucket}", storage_options=opts)] == ["two.wav"]


def test_every_documented_format_is_discovered_whatever_the_case(tmp_path):
    """README: MP3, WAV, M4A/AAC, OGG (Vorbis, Opus), FLAC are picked up; other files are not."""
    names = ["a.mp3", "b.WAV", "c.m4a", "d.aac", "e.ogg", "f.opus", "g.Flac", "h.oga", "notes.txt", "cover.jpg",
             "mp3", "x.wav.part"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    found = sorted(f.name for f in discover(str(tmp_path)))
    assert found == ["a.mp3", "b.WAV", "c.m4a", "d.aac", "e.ogg", "f.opus", "g.Flac", "h.oga"]
    assert {".mp3", ".wav", ".m4a", ".aac", ".ogg", ".opus", ".flac"} <= set(AUDIO_EXTENSIONS)
