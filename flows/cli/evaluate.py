"""`bulkscribe evaluate SOURCE --out OUT`: accuracy, speed and cost of models on labelled audio.

SOURCE holds audio with references: `<name>.txt` (and/or `<name>.rttm` speaker turns)
next to each file, or a CSV/JSON manifest (`path,text[,language][,rttm]`, given with
--references or found in SOURCE as references.csv/.json or manifest.csv/.json). Each
model's transcripts go to OUT's tables like `run`'s; the scores to OUT/quality/.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flows.cli.run import prefect_offline_defaults
from flows.errors import EXIT_NOTHING_DONE


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="transcribe labelled audio with one or more models and score them "
                                        "(WER/CER, DER, real-time factor, cost) into OUT/quality/")
    p.add_argument("source", help="folder of audio with references (or fsspec URL)")
    p.add_argument("--out", required=True, help="output folder or fsspec URL (the normal tables, plus quality/)")
    p.add_argument("--model", action="append", default=[],
                   help="model(s) to compare: repeatable or comma-separated (default: the configured model)")
    p.add_argument("--references", help="CSV or JSON manifest: path,text[,language][,rttm]")
    p.add_argument("--score-only", action="store_true",
                   help="send nothing: score the transcripts OUT already holds")
    p.add_argument("--config", help="TOML settings file (default: $BULKSCRIBE_CONFIG, else ./bulkscribe.toml)")
    p.add_argument("--language", help="ISO 639-1/639-3 code, or auto (default)")
    p.add_argument("--api-url", help="API base URL; key from NANOGPT_API_KEY. Default: the embedded server")
    p.add_argument("--batch-size", type=int, help="files per Prefect task (default 50)")
    p.add_argument("--concurrency", type=int, help="requests in flight per task (default 4)")
    p.add_argument("--include", action="append", default=[], help="glob on the path under SOURCE (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob to skip (repeatable)")
    p.add_argument("--max-files", type=int, help="stop discovery after this many files")
    p.add_argument("--diarize", action="store_true", default=None, help="speaker diarization (Elevenlabs-STT)")
    p.add_argument("--tag-audio-events", action="store_true", default=None, help="tag (music) etc. (Elevenlabs-STT)")
    p.add_argument("--budget", type=float, help="stop sending once the estimated cost reaches this many USD, per model")
    p.add_argument("--rps", type=float, help="requests per second to the API (default 20)")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "off"), help="progress on stderr (default off)")


def models_of(values: list[str]) -> list[str]:
    """--model A --model B,C -> [A, B, C], in order, without repeats."""
    seen: dict[str, None] = {}
    for value in values:
        for m in value.split(","):
            if m.strip():
                seen[m.strip()] = None
    return list(seen)


def main(args: argparse.Namespace) -> int:
    prefect_offline_defaults()
    from pydantic import ValidationError

    from config.files import ConfigError
    from config.settings import Settings
    from flows.preflight import settings_problems

    overrides = {k: v for k, v in {
        "api_url": args.api_url, "language": args.language, "batch_size": args.batch_size,
        "concurrency": args.concurrency, "diarize": args.diarize, "tag_audio_events": args.tag_audio_events,
        "budget_usd": args.budget, "requests_per_second": args.rps, "progress": args.progress or "off",
    }.items() if v is not None}
    try:
        settings = Settings.load(args.config, **overrides)
    except ValidationError as exc:
        return fail(settings_problems(exc))
    except ConfigError as exc:
        return fail([str(exc)])
    models = models_of(args.model) or [settings.model]
    params = {"include": list(args.include), "exclude": list(args.exclude), "max_files": args.max_files}
    return run_evaluation(args, settings, models, params)


def run_evaluation(args: argparse.Namespace, settings: Any, models: list[str], params: dict[str, Any]) -> int:
    from flows.errors import RunAborted
    from flows.evaluate import evaluate, render
    from flows.prefect_api import temporary_prefect_api

    try:
        with temporary_prefect_api():
            evaluation = evaluate(args.source, args.out, settings, models, references=args.references,
                                  transcribe=not args.score_only, params=params)
    except RunAborted as exc:
        return fail([str(exc)])
    print(render(evaluation))
    return 0


def fail(lines: list[str]) -> int:
    for line in lines:
        print(f"bulkscribe: {line}", file=sys.stderr)
    return EXIT_NOTHING_DONE
