"""`bulkscribe run SOURCE --out OUT`: the flow, from the command line.

Settings are loaded here, once, from the environment / .env and the flags, and passed
down to the flow.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any


def _prefect_offline_defaults() -> None:
    # Prefect's server otherwise phones home; these machines (and many users') are offline.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The temporary Prefect server gets 20 s to start by default: too short on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="transcribe every audio file under SOURCE into Parquet tables under OUT")
    run.add_argument("source", help="folder, file or fsspec URL (s3://bucket/prefix)")
    run.add_argument("--out", required=True, help="output folder or fsspec URL")
    run.add_argument("--model", help="Whisper-Large-V3 (default), Wizper, Elevenlabs-STT")
    run.add_argument("--language", help="ISO 639-1/639-3 code, or auto (default)")
    run.add_argument("--api-url", help="API base URL, e.g. https://nano-gpt.com/api; key from NANOGPT_API_KEY. "
                                       "Default: start the embedded server on loopback")
    run.add_argument("--batch-size", type=int, help="files per Prefect task (default 50)")
    run.add_argument("--concurrency", type=int, help="requests in flight per task (default 4)")
    run.add_argument("--include", action="append", default=[], help="glob on the path under SOURCE (repeatable)")
    run.add_argument("--exclude", action="append", default=[], help="glob to skip (repeatable)")
    run.add_argument("--modified-since", type=datetime.fromisoformat,
                     help="only files modified at or after (ISO date/time, UTC if no zone)")
    run.add_argument("--modified-before", type=datetime.fromisoformat,
                     help="only files modified before (ISO date/time, UTC if no zone)")
    run.add_argument("--max-files", type=int, help="stop discovery after this many files")
    run.add_argument("--diarize", action="store_true", default=None, help="speaker diarization (Elevenlabs-STT)")
    run.add_argument("--tag-audio-events", action="store_true", default=None,
                     help="tag non-speech events such as (music) (Elevenlabs-STT)")
    run.add_argument("--dry-run", action="store_true", help="list what would be sent, how, and the estimated cost")
    run.add_argument("--budget", type=float, help="stop sending once the estimated cost reaches this many USD")
    run.add_argument("--staging-url", help="where large local files are staged for a presigned URL (s3://...)")
    run.add_argument("--rps", type=float, help="requests per second over the whole run (default 20)")
    run.add_argument("--resend-unknown", action="store_true", default=None,
                     help="re-send requests whose answer was lost in an earlier run (may pay twice)")


def main(args: argparse.Namespace) -> int:
    _prefect_offline_defaults()
    from config.settings import Settings
    from flows.errors import RunAborted
    from flows.transcribe_archive import transcribe_archive
    from tasks.discovery import DiscoveryFilter

    overrides = {k: v for k, v in {
        "api_url": args.api_url, "model": args.model, "language": args.language,
        "batch_size": args.batch_size, "concurrency": args.concurrency, "diarize": args.diarize,
        "tag_audio_events": args.tag_audio_events, "resend_unknown": args.resend_unknown,
        "budget_usd": args.budget, "staging_url": args.staging_url, "requests_per_second": args.rps,
    }.items() if v is not None}
    settings = Settings(**overrides)
    filters = DiscoveryFilter(
        include=tuple(args.include), exclude=tuple(args.exclude), modified_since=args.modified_since,
        modified_before=args.modified_before, max_files=args.max_files,
    )
    try:
        summary = transcribe_archive(args.source, args.out, settings=settings, filters=filters, dry_run=args.dry_run)
    except RunAborted as exc:
        print(f"bulkscribe: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 1 if summary.failed and not summary.transcribed else 0
