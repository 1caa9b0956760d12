"""Where the last run stopped: what OUT already holds and what the ledger says is outstanding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from tasks import tables
from tasks.discovery import AudioFile, DiscoveryFilter, discover
from tasks.identity import JobOptions
from tasks.ledger import Ledger


def done_request_keys(out: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Request keys already transcribed successfully: what a re-run must not pay for again.
    Reads two columns of the transcripts table, nothing else."""
    t = tables.read_table(out, "transcripts", columns=["request_key", "status"], storage_options=storage_options)
    ok = t.filter(pc.equal(t.column("status"), "ok"))
    return {k for k in ok.column("request_key").to_pylist() if k}


@dataclass
class ResumeState:
    done: set[str] = field(default_factory=set)
    #: Ledger entries left by earlier runs whose result is not in the tables, by request key.
    outstanding: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, out: str, storage_options: dict[str, Any] | None = None) -> ResumeState:
        """Read the done keys and the ledger once; clear entries whose result is already written
        (a crash between writing the rows and clearing the entry)."""
        done = done_request_keys(out, storage_options)
        ledger = Ledger(out, storage_options)
        outstanding = ledger.outstanding()
        ledger.clear([k for k in outstanding if k in done])
        return cls(done, {k: v for k, v in outstanding.items() if k not in done})


@dataclass
class DiscoveryCounts:
    seen: int = 0
    skipped: int = 0


def pending_files(source: str, filters: DiscoveryFilter, storage_options: dict[str, Any] | None,
                  options: JobOptions, state: ResumeState, counts: DiscoveryCounts,
                  keep: Callable[[AudioFile], bool] | None = None) -> Iterator[AudioFile]:
    """The files under `source` that OUT does not hold yet, streamed; `counts` follows along.
    `keep` selects this run's share of the files (a backfill shard) before anything is counted."""
    for f in discover(source, filters, storage_options):
        if keep is not None and not keep(f):
            continue
        counts.seen += 1
        if options.request_key(f.fingerprint) in state.done:
            counts.skipped += 1
            continue
        yield f
