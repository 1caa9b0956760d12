"""Scheduled and backfill deployments of transcribe_archive, served by this process.

    BULKSCRIBE_SOURCE=s3://archive/calls BULKSCRIBE_OUT=s3://analytics/stt \
    NANOGPT_API_KEY=... BULKSCRIBE_API_URL=https://nano-gpt.com/api \
    python deployments/serve.py

- `nightly`: every night at 02:00 UTC over the whole source. Re-runs are cheap: files
  already transcribed with the same model and options are skipped, so "new recordings"
  needs no date window and a missed night is caught up by the next one.
- `backfill`: no schedule; start it by hand with a date window for archived years:
  `prefect deployment run 'transcribe_archive/backfill' -p modified_before=2024-01-01`.

The key is read by the flow from the worker's environment (NANOGPT_API_KEY), never
passed as a parameter: Prefect stores parameters in its database.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import serve  # noqa: E402

from flows.transcribe_archive import backfill, transcribe_archive  # noqa: E402


def deployments(source: str, out: str):
    return [
        transcribe_archive.to_deployment(name="nightly", cron="0 2 * * *", parameters={"source": source, "out": out},
                                         description="New recordings, every night"),
        backfill.to_deployment(name="backfill", parameters={"source": source, "out": out},
                               description="Archived audio over a date window"),
    ]


if __name__ == "__main__":
    serve(*deployments(os.environ["BULKSCRIBE_SOURCE"], os.environ["BULKSCRIBE_OUT"]))
