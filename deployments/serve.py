"""The deployments of deployments/prefect.yaml, served by this process (no work pool needed).

    BULKSCRIBE_SOURCE=s3://archive/calls BULKSCRIBE_OUT=s3://analytics/stt \
    NANOGPT_API_KEY=... BULKSCRIBE_API_URL=https://nano-gpt.com/api \
    python deployments/serve.py

- `transcribe_archive/nightly`: every night at 02:00 UTC over the whole source,
  incremental (only what the tables do not hold yet).
- `bulkscribe_backfill/backfill`: no schedule; start it with a window and a shard count:
  `prefect deployment run bulkscribe_backfill/backfill -p shards=4 -p modified_before=2024-01-01`.
  Its shards run as `transcribe_archive/shard`, in this process too.

The schedule stays active when this process stops (pause_on_shutdown=False): a restart
or a deploy must not silently stop the nightly runs. Settings and the key are read by
the flows from this process's environment, never passed as parameters.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import serve  # noqa: E402
from prefect.deployments.runner import RunnerDeployment  # noqa: E402

from flows.backfill import backfill  # noqa: E402
from flows.transcribe_archive import transcribe_archive  # noqa: E402

NIGHTLY_CRON = "0 2 * * *"


def deployments(source: str, out: str, shards: int = 4) -> list[RunnerDeployment]:
    archive = {"source": source, "out": out}
    made = [
        transcribe_archive.to_deployment(name="nightly", cron=NIGHTLY_CRON, parameters=archive,
                                         description="New recordings, every night (only what is not yet in the tables)"),
        backfill.to_deployment(name="backfill", parameters={**archive, "shards": shards},
                               description="Archived audio over a date window / prefixes, in shards"),
        transcribe_archive.to_deployment(name="shard", parameters=archive, description="One shard of a backfill"),
    ]
    return [d for d in made if isinstance(d, RunnerDeployment)]  # called outside an event loop: never a coroutine


if __name__ == "__main__":
    serve(*deployments(os.environ["BULKSCRIBE_SOURCE"], os.environ["BULKSCRIBE_OUT"]), pause_on_shutdown=False)
