"""`python -m stt.server`: run the embedded server (what `bulkscribe serve` and the launcher call)."""

from __future__ import annotations

import argparse
import os
import sys

from stt.server.settings import ServerSettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bulkscribe serve", description=__doc__)
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8765)")
    p.add_argument("--api-key", default=None,
                   help="API key to accept (also BULKSCRIBE_SERVER_BOOTSTRAP_KEY); created if new")
    p.add_argument("--balance", type=float, default=10.0,
                   help="USD balance a new key starts with (an existing key keeps its balance)")
    p.add_argument("--db", default=None, help="SQLite file for keys, balances, charges and jobs")
    p.add_argument("--model-dir", default=None, help="CTranslate2 Whisper dir or hub id (default: bundled base)")
    args = p.parse_args(argv)

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "db_path": args.db,
                                   "whisper_model": args.model_dir}.items() if v is not None}
    settings = ServerSettings(**overrides)
    key = args.api_key or os.environ.get("BULKSCRIBE_SERVER_BOOTSTRAP_KEY")
    if not key:
        print("give an API key with --api-key (or BULKSCRIBE_SERVER_BOOTSTRAP_KEY)", file=sys.stderr)
        return 2
    from stt.server.app import serve

    serve(settings, {key: args.balance})
    return 0


if __name__ == "__main__":
    sys.exit(main())
