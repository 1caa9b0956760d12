"""Shared fixtures: real speech, a real embedded server on loopback, a real Prefect API.

Nothing here replaces the API, S3 or Prefect with a fake; the only fakes in the suite
are transport-level fault injectors, for failures a real server cannot produce on demand.
"""

from __future__ import annotations

import json
from collections import Counter
import os
import urllib.request
import socket
import threading
from pathlib import Path

import httpx
import pytest

from bench._common import wer  # noqa: F401  (the tests' WER: lower-cased, punctuation stripped)
from bench._common import words as normalize  # noqa: F401  (re-exported for the tests)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
SAMPLES = REPO / "samples"


def audio_file(name: str) -> Path:
    """A clip of the shared speech set, or the repo's own copy when ../shared is absent."""
    for folder in (SHARED_AUDIO, SAMPLES):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} is neither in {SHARED_AUDIO} nor in {SAMPLES}")


def distinct_copy(name: str, dst: Path) -> Path:
    """A copy of a clip with a few random bytes appended: decoders ignore them, but the
    content (and so the request key) is this test's own, so charges counted on the shared
    server belong to this test and are not idempotent replays of another test's request."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(audio_file(name).read_bytes() + os.urandom(16))
    return dst


def manifest() -> list[dict]:
    path = SHARED_AUDIO / "manifest.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())


def reference(file_name: str) -> str:
    for entry in manifest():
        if entry["file"] == file_name:
            return entry["reference"]
    pytest.skip(f"no reference for {file_name}")


# -- which tests ran on the real model ------------------------------------------------------

REAL_MODEL = "real_model"
_real_model_ran: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session's real server runs on the real model, marked or not."""
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(REAL_MODEL)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and REAL_MODEL in report.keywords:
        _real_model_ran.add(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001 - pytest's hook
    terminalreporter.write_line(f"{len(_real_model_ran)} tests ran on the real model")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def files_url():
    """A static HTTP server on loopback serving the speech set (see tests/fake_server.py)."""
    from tests.fake_server import file_server

    with file_server(SHARED_AUDIO if SHARED_AUDIO.is_dir() else SAMPLES) as url:
        yield url


@pytest.fixture(scope="session")
def server():
    """The embedded server on a free loopback port, with real weights, for the whole session."""
    from stt.server.launcher import EmbeddedServer

    # audioUrl tests and the S3 tests' presigned URLs point at loopback servers.
    with EmbeddedServer(balance_usd=1000.0, url_allowlist=("127.0.0.0/8",)) as srv:
        yield srv


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary server and database) for the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# -- a real moto S3 server on loopback per test module, as s3fs's own tests do ------------

_AWS_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)




def run_threads(target, count: int) -> None:
    """Run `target(i)` for i in 0..count-1, each in its own thread, and wait for all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_proxy_for_loopback(mp: pytest.MonkeyPatch) -> None:
    """botocore/aiohttp/httpx honour HTTP(S)_PROXY; a proxy cannot reach our loopback server."""
    for var in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(var, "")
        mp.setenv(var, ",".join(x for x in (current, "127.0.0.1", "localhost") if x))


def isolate_aws(mp: pytest.MonkeyPatch, tmp_dir: str) -> None:
    """Drop every AWS_* setting and the user's ~/.aws files."""
    for var in _AWS_VARS:
        mp.delenv(var, raising=False)
    mp.setenv("AWS_CONFIG_FILE", os.path.join(tmp_dir, "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.path.join(tmp_dir, "no-aws-credentials"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no 1 s IMDS probes when creds are missing
    no_proxy_for_loopback(mp)


@pytest.fixture(scope="module")
def s3_server():
    """A real moto S3 server on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        no_proxy_for_loopback(mp)  # for module-scoped clients created before s3_env
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        url = f"http://127.0.0.1:{port}"
        # moto's buckets live in the test process, shared by every module's server: start empty
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()
        try:
            yield url
        finally:
            server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Standard AWS variables pointing at the moto server; restored after the test."""
    isolate_aws(monkeypatch, str(tmp_path_factory.mktemp("aws")))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


# -- one file through the pipeline's sending code, as a batch sends it ----------------------


async def send_one(client, f, cfg):
    """`transcribe_one` for one file with the ledger and claims a batch uses; the ledger is
    settled afterwards as a batch settles it (claims released, finished entries cleared)."""
    from tasks.batch import settle_ledger
    from tasks.claims import Claims, Owner
    from tasks.ledger import Ledger
    from tasks.sending import StopSignal, transcribe_one

    ledger = Ledger(cfg.out, cfg.storage_options)
    claims = Claims(cfg.out, cfg.owner or Owner.this_process(cfg.run_id), cfg.storage_options)
    outcome = await transcribe_one(client, f, cfg, ledger, claims, StopSignal())
    settle_ledger([outcome], ledger, claims)
    return outcome


# -- the server's own ledger: what was paid (every test that counts money reads it here) ------


def balance(server) -> float:
    """The key's USD balance, from the server."""
    r = httpx.post(server.api_url + "/check-balance", headers={"x-api-key": server.api_key}, trust_env=False)
    return float(r.json()["usd_balance"])


def usage(server) -> list[dict]:
    """Every charge and refund of the key, oldest first (the server's /api/usage)."""
    r = httpx.get(server.api_url + "/usage", headers={"x-api-key": server.api_key}, trust_env=False)
    return r.json()["charges"]


def paid_per_file(server) -> Counter[str]:
    """Charges per uploaded file name, refunded jobs left out."""
    rows = usage(server)
    refunded = {c["run_id"] for c in rows if c["kind"] == "refund"}
    return Counter(c["file_name"] for c in rows if c["kind"] in ("sync", "job") and c.get("run_id") not in refunded)


def settings_for(server, **kw):
    """Pipeline settings against `server` (Wizper unless told otherwise)."""
    from config.settings import Settings
    from pydantic import SecretStr

    return Settings(**{"api_url": server.api_url, "api_key": SecretStr(server.api_key), "model": "Wizper", **kw})
