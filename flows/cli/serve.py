"""`bulkscribe serve`: the embedded NanoGPT-compatible server on its own (its flags are the
server's own, defined once in `stt.server.__main__`)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from stt.server.__main__ import add_arguments

    add_arguments(sub.add_parser("serve", help="run the embedded NanoGPT-compatible server"))


def main(args: argparse.Namespace) -> int:
    from stt.server.__main__ import run

    return run(args)
