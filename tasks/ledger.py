"""What was sent and what came back: the pipeline's memory across crashes.

One small JSON entry per request in flight under `OUT/_ledger/`, named by its request
key and written (atomically, fsynced) at each step of the request's life:

- `sent`: written before the request leaves;
- `submitted`: an asynchronous job's runId, before polling starts;
- `answered`: the answer itself, the moment it arrives, before anything else is done
  with it (durable answers: a kill -9 at any later moment loses nothing that was paid).

On a local disk the first `sent` entry costs no file of its own: the request's claim
(`tasks.claims`) is created holding it, fsynced, and is hard-linked under the entry's
name just before the request leaves (`publish`); and once the rows are written a small
last entry is renamed over the claim as its tombstone (`retire`). Creating a file is what
a ledger write costs (0.1-0.4 ms of CPU each on ext4 here, against microseconds for a
link or a rename), so this halves the files created per request. Object stores have no
links or renames: there the entry is written and the tombstone too.

An entry is removed only once the file's rows are in the tables. The next run reads what
the entries say: answers become rows without sending, recorded jobs are polled instead
of submitted again, and a request sent with no answer recorded is re-sent only with the
same idempotency key to an API that honours it; otherwise it is reported, not paid for
twice.

The same folder holds the requests' claims and the runs' leases (`tasks.claims`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tasks import storage

Entry = dict[str, Any]

#: The largest entry kept as a tombstone (`Ledger.retire`): a short clip's answer, not an hour of words.
TOMBSTONE_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class ClaimFile:
    key: str
    path: str
    modified: float  # seconds since the epoch


@dataclass
class LedgerScan:
    entries: dict[str, Entry]
    claims: list[ClaimFile]


class Ledger:
    def __init__(self, out: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = storage.filesystem_for(out, storage_options)
        self.root = root.rstrip("/") + "/_ledger"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}.json"

    def scan(self) -> LedgerScan:
        """Every entry left by earlier runs, by request key, and every claim file."""
        scan = LedgerScan({}, [])
        if not self.fs.exists(self.root):
            return scan
        for info in self.fs.ls(self.root, detail=True):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") == "directory" or name.startswith("."):
                continue
            if name.endswith(".json"):
                entry = self._load(info["name"])
                if entry is not None:
                    scan.entries[name[:-5]] = entry
            elif ".claim." in name:
                scan.claims.append(ClaimFile(name.split(".claim.")[0], info["name"], _modified(info)))
        return scan

    def _load(self, path: str) -> Entry | None:
        try:
            value = json.loads(self.fs.cat_file(path))
        except (ValueError, OSError):
            return None  # a torn entry from a crash mid-write on a store without atomic writes
        return value if isinstance(value, dict) else None

    def read(self, key: str) -> Entry | None:
        return self._load(self._path(key))  # a missing entry is an OSError there: None

    def write(self, key: str, entry: Entry) -> None:
        entry = {**entry, "updated_at": datetime.now(UTC).isoformat()}
        data = json.dumps(entry, sort_keys=True).encode()
        storage.write_atomic(self.fs, self._path(key), lambda f: f.write(data), durable=True)

    def publish(self, key: str, claim_path: str) -> bool:
        """The held claim, created with this request's first entry (fsynced), becomes the
        entry: a hard link. False where that cannot be done: write the entry instead."""
        return storage.link_local(self.fs, claim_path, self._path(key))

    def retire(self, key: str, claim_path: str) -> bool:
        """The rows are written: the entry becomes the claim's tombstone (a rename; its
        time is now). False where that cannot be done, or where the entry is large (a long
        file's answer would stay on disk until the tombstone is collected): then clear the
        entry and finish the claim."""
        try:
            small = storage.is_local(self.fs) and os.path.getsize(self._path(key)) <= TOMBSTONE_MAX_BYTES
        except OSError:
            return False
        return small and storage.move_local(self.fs, self._path(key), claim_path)

    def clear(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.fs.rm_file(self._path(key))
            except FileNotFoundError:
                pass

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass


def _modified(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("created", 0.0)))
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
