"""`bulkscribe` command line. Each command is a module of this package with
`register(subparsers)` (its flags) and `main(args) -> exit code`."""

from __future__ import annotations

import argparse
from types import ModuleType

from flows.cli import compact, evaluate, export, run, serve

COMMANDS: dict[str, ModuleType] = {"run": run, "serve": serve, "compact": compact, "evaluate": evaluate, "export": export}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bulkscribe", description="Audio archives to Parquet tables.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = COMMANDS[args.command].main(args)
    return code

