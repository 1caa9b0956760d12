"""Shared fixtures: real speech, a real embedded server on loopback, a real Prefect API.

Nothing here replaces the API, S3 or Prefect with a fake; the only fakes in the suite
are transport-level fault injectors, for failures a real server cannot produce on demand.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

import pytest

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


def _normalize(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']", " ", text)
    return text.split()


def wer(reference_text: str, hypothesis: str) -> float:
    """Word error rate after lower-casing and stripping punctuation on both sides."""
    ref, hyp = _normalize(reference_text), _normalize(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))


@pytest.fixture(scope="session")
def server():
    """The embedded server on a free loopback port, with real weights, for the whole session."""
    from stt.server.launcher import EmbeddedServer

    with EmbeddedServer(balance_usd=1000.0) as srv:
        yield srv


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary server and database) for the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
