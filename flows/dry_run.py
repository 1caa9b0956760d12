"""What a real run would send, how, and what it would cost; sends and writes nothing."""

from __future__ import annotations

from collections.abc import Iterable

from config.settings import Settings
from flows.summary import RunSummary
from stt import errors
from tasks.batch_config import job_options, upload_policy
from tasks.discovery import AudioFile
from tasks.upload import plan_upload


def dry_run(files: Iterable[AudioFile], settings: Settings, summary: RunSummary) -> RunSummary:
    """Plan each pending file as a run would and print its mode, minutes and estimated cost."""
    summary.dry_run = True
    options, policy = job_options(settings), upload_policy(settings)
    price = settings.prices_usd_per_min.get(options.model)
    print(f"{'mode':<9} {'minutes':>8} {'est. USD':>10}  source")
    for f in files:
        try:
            plan = plan_upload(f, policy, price_per_min=price, dry_run=True)
        except errors.STTError as exc:
            summary.failed += 1
            summary.failures.append(f"{f.url}: {exc.message}")
            continue
        minutes = (plan.duration_s or 0.0) / 60.0
        summary.audio_minutes += minutes
        summary.estimated_cost += plan.estimated_cost or 0.0
        est = f"{plan.estimated_cost:.6f}" if plan.estimated_cost is not None else "?"
        print(f"{plan.mode:<9} {minutes:>8.2f} {est:>10}  {f.url}")
    return summary
