"""The fault matrix (issue 12): nothing paid twice, nothing paid without a result that reached us.

{sync (Wizper), async (Elevenlabs-STT)} x {idempotency on, off} x {no kill, kill -9 mid-run
then re-run}, 12 files each, 30 % injected faults on submit and status (429 with
Retry-After, 500, 503, connection closed before processing, closed after processing, delay).

Real parts: `bulkscribe run` processes against a `bulkscribe serve` process (the embedded
server with its fault mode and the deterministic fake engine: the faults, charges and
idempotency are the server's own), a real Prefect API. Counts come from the server's own
ledger (/api/usage) and the tables:

- paid twice: files the server charged (net of refunds) more than once: must be 0;
- paid without result: files charged and without a transcript row;
- idempotency on ("off" means the server ignores Idempotency-Key, as an API that documents
  none): 12/12 transcribed in every cell, kill -9 included, and nothing paid without result;
- idempotency off: only answers lost in transit can be paid without a result: at most the
  answers the server produced and then cut off (close_after on submit, counted from its
  log) plus the requests the ledger shows in flight when the run was killed, each reported
  as a failure row of kind "unknown"; an answer the ledger holds never becomes one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from flows.prefect_api import temporary_prefect_api
from stt.server.launcher import EmbeddedServer
from tasks.ledger import parse_entry
from tests.conftest import REPO, distinct_copy, paid_per_file

FILES = 12
MODELS = {"sync": "Wizper", "async": "Elevenlabs-STT"}


@pytest.fixture(scope="module")
def prefect_url():
    from prefect.settings import get_current_settings

    with temporary_prefect_api() as url:  # None: one is configured already (the session's)
        yield url or get_current_settings().api.url


@dataclass
class Cell:
    mode: str
    idempotency: bool
    kill: bool

    @property
    def name(self) -> str:
        return f"{self.mode}-{'idem' if self.idempotency else 'noidem'}-{'kill' if self.kill else 'nokill'}"


CELLS = [Cell(m, i, k) for m in MODELS for i in (True, False) for k in (False, True)]


def _run_cmd(server: EmbeddedServer, src: Path, out: Path, cell: Cell, prefect_url: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKSCRIBE_", "NANOGPT_", "PREFECT_API"))}
    env.update(PREFECT_API_URL=prefect_url, NANOGPT_API_KEY=server.api_key, BULKSCRIBE_MAX_ATTEMPTS="12",
               BULKSCRIBE_BACKOFF_BASE_S="0.05", BULKSCRIBE_BACKOFF_MAX_S="0.2")
    cmd = [sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(out), "--api-url", server.api_url,
           "--model", MODELS[cell.mode], "--language", "en", "--batch-size", "4", "--concurrency", "2"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ledger_states(out: Path) -> dict[str, str]:
    states = {}
    for path in (out / "_ledger").glob("*.json"):
        try:
            entry = parse_entry(path.read_bytes(), path.stem)
        except OSError:
            continue
        if entry is None:
            continue
        states[entry.get("source", "")] = "answered" if entry.get("answers") else entry.get("state", "")
    return states


def _kill_mid_run(proc: subprocess.Popen, out: Path) -> dict[str, str]:
    """kill -9 once an answer is recorded and before the run ends; the ledger as it was then."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        states = _ledger_states(out)
        if any(s == "answered" for s in states.values()):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout:
                proc.stdout.close()  # the killed run's pipe: closed, not left to the garbage collector
            return _ledger_states(out)
        time.sleep(0.02)
    pytest.fail(f"the run ended before it could be killed mid-run:\n{proc.communicate()[0][-3000:]}")


def _table(out: Path, name: str) -> pl.DataFrame:
    files = list((out / name).glob("*.parquet"))
    return pl.read_parquet(files) if files else pl.DataFrame()


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_fault_matrix(cell: Cell, prefect_url, tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(FILES):
        distinct_copy("timit_LDC93S1.wav", src / f"f{i:02d}.wav")
    out = tmp_path / "out"
    env = {"BULKSCRIBE_SERVER_ENGINE": "fake", "BULKSCRIBE_SERVER_IDEMPOTENCY": str(cell.idempotency).lower(),
           "BULKSCRIBE_SERVER_FAULTS": f"all=0.3,seed={cell.name},retry_after=0,delay_s=0.3"}
    with EmbeddedServer(env=env, db_path=tmp_path / "server.sqlite3", log_path=tmp_path / "server.log") as server:
        proc = _run_cmd(server, src, out, cell, prefect_url)
        in_flight: set[str] = set()
        if cell.kill:
            at_kill = _kill_mid_run(proc, out)
            in_flight = {Path(s).name for s, state in at_kill.items() if state == "sent"}
            answered_at_kill = {Path(s).name for s, state in at_kill.items() if state == "answered"}
            proc = _run_cmd(server, src, out, cell, prefect_url)
        log, _ = proc.communicate(timeout=600)
        paid = paid_per_file(server)
    transcripts, failures = _table(out, "transcripts"), _table(out, "failures")
    done = {Path(s).name for s in transcripts["source"]} if transcripts.height else set()
    paid_twice = sorted(f for f, n in paid.items() if n > 1)
    without_result = sorted(set(paid) - done)
    lost_in_transit = (tmp_path / "server.log").read_text().count("injected fault on submit: close_after")
    with capsys.disabled():
        print(f"\n  {cell.name:22} transcribed {len(done):2}/{FILES}  failure rows {failures.height:2}  "
              f"charges {sum(paid.values()):2}  paid twice {len(paid_twice)}  paid without result "
              f"{len(without_result)}  (closed after processing {lost_in_transit}, in flight at kill {len(in_flight)})")
    assert proc.returncode in (0, 1), log[-3000:]
    assert transcripts.height == len(done)  # one row per file
    assert not paid_twice, paid_twice
    if cell.idempotency:
        assert len(done) == FILES, log[-3000:]
        assert not without_result
    else:
        assert len(without_result) <= lost_in_transit + len(in_flight)
        unknown = {Path(s).name for s in failures.filter(pl.col("error_kind") == "unknown")["source"]} \
            if failures.height else set()
        assert set(without_result) <= unknown  # each one is reported, not silently lost
        if cell.kill:
            assert not (set(without_result) & answered_at_kill)  # an answer the ledger held is never lost
        assert len(done) + len(unknown) == FILES  # every other file got its transcript
