"""`bulkscribe run SOURCE --out OUT`: the flow, from the command line.

Settings are loaded here, once (config file, environment, flags), and checked before
anything starts: bad arguments, a missing SOURCE, an OUT that cannot be written, S3
without credentials or an API that does not answer end in one line each and exit code
2, before a Prefect or embedded server is started.

Exit codes: 0 all done, 1 some files failed (or were left unsent), 2 nothing could be
done (bad arguments or environment, bad key, no money, budget).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any

from flows.errors import EXIT_NOTHING_DONE, EXIT_SOME_FAILED


def prefect_offline_defaults() -> None:
    # Prefect's server otherwise phones home; these machines (and many users') are offline.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Prefect's own INFO lines would drown the progress bar; warnings (failed files) still show.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The temporary Prefect server gets 20 s to start by default: too short on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="transcribe every audio file under SOURCE into Parquet tables under OUT")
    run.add_argument("source", help="folder, file or fsspec URL (s3://bucket/prefix)")
    run.add_argument("--out", required=True, help="output folder or fsspec URL")
    run.add_argument("--config", help="TOML settings file (default: $BULKSCRIBE_CONFIG, else ./bulkscribe.toml)")
    run.add_argument("--model", help="Whisper-Large-V3 (default), Wizper, Elevenlabs-STT")
    run.add_argument("--language", help="ISO 639-1/639-3 code, or auto (default)")
    run.add_argument("--api-url", help="API base URL, e.g. https://nano-gpt.com/api; key from NANOGPT_API_KEY. "
                                       "Default: start the embedded server on loopback")
    run.add_argument("--batch-size", type=int, help="files per Prefect task (default 50)")
    run.add_argument("--concurrency", type=int, help="requests in flight per task (default 4)")
    run.add_argument("--parallel-batches", type=int, help="tasks in flight at once (default 2)")
    run.add_argument("--task-runner", choices=("threads", "dask", "ray"),
                     help="where batch tasks run (default threads; dask/ray need the extra)")
    run.add_argument("--task-runner-address", help="existing Dask scheduler / Ray cluster address")
    run.add_argument("--task-runner-workers", type=int, help="worker processes of a local Dask/Ray cluster (default 2)")
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
    run.add_argument("--rps", type=float, help="requests per second to the API, over all runs when a Prefect "
                                               "server is configured (default 20)")
    run.add_argument("--progress", choices=("auto", "bar", "lines", "off"),
                     help="progress on stderr: a bar on a terminal, plain lines otherwise (default auto)")
    run.add_argument("--resend-unknown", action="store_true", default=None,
                     help="re-send requests whose answer was lost in an earlier run (may pay twice)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {
        "api_url": args.api_url, "model": args.model, "language": args.language,
        "batch_size": args.batch_size, "concurrency": args.concurrency, "diarize": args.diarize,
        "tag_audio_events": args.tag_audio_events, "resend_unknown": args.resend_unknown,
        "budget_usd": args.budget, "staging_url": args.staging_url, "requests_per_second": args.rps,
        "parallel_batches": args.parallel_batches, "task_runner": args.task_runner,
        "task_runner_address": args.task_runner_address, "task_runner_workers": args.task_runner_workers,
        "progress": args.progress,
    }.items() if v is not None}


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(f"bulkscribe: {line}", file=sys.stderr)
    return EXIT_NOTHING_DONE


#: After SIGTERM, how long the run may take to record its end before the process exits anyway.
TERM_GRACE_S = 10.0


def main(args: argparse.Namespace) -> int:
    prefect_offline_defaults()
    from pydantic import ValidationError

    from config.files import ConfigError
    from config.settings import Settings
    from flows.preflight import preflight, settings_problems

    try:
        settings = Settings.load(args.config, **_overrides(args))
    except ValidationError as exc:
        return _fail(settings_problems(exc))
    except ConfigError as exc:
        return _fail([str(exc)])
    if args.max_files is not None and args.max_files < 0:
        return _fail(["--max-files must be 0 or more"])
    problems = preflight(args.source, args.out, settings)
    if problems:
        return _fail(problems)
    from prefect.exceptions import TerminationSignal

    from flows.interrupts import stop_on_sigterm

    stop_on_sigterm(TERM_GRACE_S)
    try:
        return _run(args, settings)
    except (KeyboardInterrupt, TerminationSignal):  # TerminationSignal: SIGTERM while Prefect's handler is armed
        from flows.interrupts import INTERRUPTED

        print(INTERRUPTED, file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, settings: Any) -> int:
    from flows.errors import NothingTranscribed, RunAborted
    from flows.prefect_api import temporary_prefect_api
    from flows.transcribe_archive import preloaded, transcribe_archive

    # Our own temporary Prefect API (when none is configured), so that a kill -9 of this
    # process leaves no server behind; the embedded server has its own lifeline.
    with temporary_prefect_api(), preloaded(settings):
        state = transcribe_archive(
            args.source, args.out, include=list(args.include), exclude=list(args.exclude),
            modified_since=args.modified_since, modified_before=args.modified_before, max_files=args.max_files,
            dry_run=args.dry_run, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, RunAborted):
        return _fail([str(outcome)])
    if isinstance(outcome, NothingTranscribed):
        outcome = outcome.summary
    if isinstance(outcome, BaseException):
        print(f"bulkscribe: the run failed: {type(outcome).__name__}: {outcome}", file=sys.stderr)
        return EXIT_SOME_FAILED
    print(outcome.render())
    code: int = outcome.exit_code()
    return code
