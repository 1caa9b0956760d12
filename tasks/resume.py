"""Where the last run stopped: what OUT already holds, and the ledger's leftovers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.dataset as ds

from tasks import tables
from tasks.claims import Claims, Owner
from tasks.discovery import AudioFile, DiscoveryFilter, discover
from tasks.identity import JobOptions
from tasks.ledger import Ledger


@dataclass
class DoneIndex:
    """What OUT holds for one set of options: files by (source, fingerprint), and request keys."""

    files: set[tuple[str, str]] = field(default_factory=set)
    contents: frozenset[str] = frozenset()

    @classmethod
    def load(cls, out: str, options: JobOptions, storage_options: dict[str, Any] | None = None) -> DoneIndex:
        """Reads four columns of the transcripts table, nothing else."""
        t = tables.read_table(out, "transcripts", columns=["source", "fingerprint", "request_key"],
                              where=(ds.field("status") == "ok") & (ds.field("options") == options.as_json()),
                              storage_options=storage_options)
        sources, prints, keys = (t.column(c).to_pylist() for c in ("source", "fingerprint", "request_key"))
        return cls(set(zip(sources, prints)), frozenset(k for k in keys if k))


@dataclass
class ResumeState:
    done: DoneIndex
    #: Ledger entries left by earlier runs (answers, jobs, requests sent with no answer).
    outstanding: int = 0

    @classmethod
    def load(cls, out: str, options: JobOptions, owner: Owner,
             storage_options: dict[str, Any] | None = None) -> ResumeState:
        """Read what OUT holds once; clear ledger entries whose rows are already written (a crash
        between writing the rows and clearing the entry) and claims no live run can need."""
        done = DoneIndex.load(out, options, storage_options)
        ledger = Ledger(out, storage_options)
        scan = ledger.scan()
        ledger.clear([k for k in scan.entries if k in done.contents])
        claims = Claims(out, owner, storage_options)
        ledger.remove(claims.collectable(scan.claims, set(done.contents)) + claims.orphan_journals())
        return cls(done, sum(1 for k in scan.entries if k not in done.contents))


@dataclass
class DiscoveryCounts:
    seen: int = 0
    skipped: int = 0


def pending_files(source: str, filters: DiscoveryFilter, storage_options: dict[str, Any] | None,
                  done: DoneIndex, counts: DiscoveryCounts,
                  keep: Callable[[AudioFile], bool] | None = None) -> Iterator[AudioFile]:
    """The files under `source` (those `keep` accepts: a shard) that OUT does not hold yet,
    streamed; `counts` follows along."""
    for f in discover(source, filters, storage_options):
        if keep is not None and not keep(f):
            continue
        counts.seen += 1
        if (f.url, f.fingerprint) in done.files:
            counts.skipped += 1
            continue
        yield f
