"""`bulkscribe serve`: the embedded NanoGPT-compatible server on its own."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the embedded NanoGPT-compatible server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--api-key", help="key to accept (or BULKSCRIBE_SERVER_BOOTSTRAP_KEY)")
    serve.add_argument("--balance", type=float, default=10.0, help="USD balance a new key starts with")
    serve.add_argument("--db", help="SQLite file for keys, balances, charges and jobs")
    serve.add_argument("--model-dir", help="CTranslate2 Whisper dir or hub id (default: bundled Whisper base)")


def main(args: argparse.Namespace) -> int:
    from stt.server.__main__ import main as serve_main

    forwarded = ["--host", args.host, "--port", str(args.port), "--balance", str(args.balance)]
    for flag, value in (("--api-key", args.api_key), ("--db", args.db), ("--model-dir", args.model_dir)):
        if value:
            forwarded += [flag, value]
    return serve_main(forwarded)
