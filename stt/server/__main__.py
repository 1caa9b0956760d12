"""`python -m stt.server`: run the embedded server (what `bulkscribe serve` and the launcher call).

The API key to accept comes from `--api-key-file PATH` (first line), else `--api-key`
(visible to every user in `ps`), else the environment (BULKSCRIBE_SERVER_BOOTSTRAP_KEY).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from stt.server.faults import FaultPlan
from stt.server.settings import ServerSettings
from stt.server.url_guard import UrlPolicy

KEY_ENV = "BULKSCRIBE_SERVER_BOOTSTRAP_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bulkscribe serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's flags, on this parser (`bulkscribe serve` adds them to its subcommand)."""
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8765)")
    p.add_argument("--api-key-file", default=None,
                   help="file whose first line is the API key to accept (a new key is created)")
    p.add_argument("--api-key", default=None,
                   help=f"API key to accept (shows in `ps`: prefer --api-key-file or {KEY_ENV})")
    p.add_argument("--balance", type=float, default=10.0,
                   help="USD balance a new key starts with (an existing key keeps its balance)")
    p.add_argument("--db", default=None, help="SQLite file for keys, balances, charges and jobs")
    p.add_argument("--model-dir", default=None, help="CTranslate2 Whisper dir or hub id (default: bundled base)")
    p.add_argument("--engine", choices=("whisper", "fake"), default=None,
                   help="fake: deterministic words, no weights (tests, benchmarks)")
    p.add_argument("--url-allowlist", default=None,
                   help="audioUrl hosts/CIDRs allowed on loopback or private networks, comma-separated")
    p.add_argument("--faults", default=None, metavar="SPEC",
                   help="inject faults, e.g. 'all=0.3,seed=7' (see stt/server/faults.py)")
    p.add_argument("--lifeline-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)


def api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        lines = Path(args.api_key_file).read_text().splitlines()
        return lines[0].strip() if lines else None
    return args.api_key or os.environ.get(KEY_ENV)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve until stopped; 2 (and a message) for bad arguments."""
    from stt.server.lifeline import hold_on

    hold_on(args.lifeline_fd, args.parent_pid)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "db_path": args.db,
                                   "whisper_model": args.model_dir, "engine": args.engine,
                                   "url_allowlist": args.url_allowlist, "faults": args.faults}.items()
                 if v is not None}
    try:
        settings = ServerSettings(**overrides)
        FaultPlan.parse(settings.faults)
        UrlPolicy.parse(settings.url_allowlist)
        key = api_key(args)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"bulkscribe serve: {exc}", file=sys.stderr)
        return 2
    if not key:
        print(f"give an API key with --api-key-file (or {KEY_ENV}, or --api-key)", file=sys.stderr)
        return 2
    from stt.server.app import serve

    serve(settings, {key: args.balance})
    return 0


if __name__ == "__main__":
    sys.exit(main())
