"""What was sent and what came back: the pipeline's memory across crashes.

One small entry per request in flight under `OUT/_ledger/`, named by its request key and
recorded (durably: fsynced) at each step of the request's life:

- `sent`: written before the request leaves;
- `submitted`: an asynchronous job's runId, before polling starts;
- `answered`: the answer itself, the moment it arrives, before anything else is done
  with it (durable answers: a kill -9 at any later moment loses nothing that was paid).

On a local disk no file is created per request: creating one costs 0.3-0.8 ms of CPU on
the ext4 measured here, against microseconds for a link, a rename or an append. A batch's
entries are JSON lines in one journal file (`tasks.journal`), each with its request key;
the request's claim (`tasks.claims`) is a hard link to it made once its `sent` line is in
(fsynced), and the entry's name another, made just before the request leaves (`publish`).
Later steps are appended; every name reads as the last whole line with its key
(`parse_entry`: a line torn by a crash mid-append is skipped). A line over
`TOMBSTONE_MAX_BYTES`, or a journal past its size, makes the entry a file of its own,
rewritten atomically. Once the rows are written, the entry's name is dropped and the claim,
holding the last line, is the tombstone (`retire`). Object stores have no links, renames
or appends: there the entry is written at each step and the tombstone too.

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
from tasks.journal import JOURNAL_MAX_BYTES

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
                entry = self._load(info["name"], name[:-5])
                if entry is not None:
                    scan.entries[name[:-5]] = entry
            elif ".claim." in name:
                scan.claims.append(ClaimFile(name.split(".claim.")[0], info["name"], _modified(info)))
        return scan

    def _load(self, path: str, key: str) -> Entry | None:
        try:
            return parse_entry(storage.cat(self.fs, path), key)
        except OSError:
            return None

    def read(self, key: str) -> Entry | None:
        return self._load(self._path(key), key)  # a missing entry is an OSError there: None

    def write(self, key: str, entry: Entry) -> None:
        entry = {**entry, "key": key, "updated_at": datetime.now(UTC).isoformat()}
        data = json.dumps(entry, sort_keys=True).encode()
        if len(data) <= TOMBSTONE_MAX_BYTES and storage.append_local(
                self.fs, self._path(key), b"\n" + data, max_bytes=JOURNAL_MAX_BYTES, durable=True):
            return  # appended to the entry's file (the batch's journal, see tasks.journal)
        storage.write_atomic(self.fs, self._path(key), lambda f: f.write(data), durable=True)

    def publish(self, key: str, claim_path: str) -> bool:
        """The held claim, created with this request's first entry (fsynced), becomes the
        entry: a hard link. False where that cannot be done: write the entry instead."""
        return storage.link_local(self.fs, claim_path, self._path(key))

    def retire(self, key: str, claim_path: str) -> bool:
        """The rows are written: the entry becomes the claim's tombstone (a rename, or only
        the entry's name dropped where the claim already is the entry; its time is now).
        False where that cannot be done, or where the entry is large (a long file's answer
        would stay on disk until the tombstone is collected): then clear the entry and
        finish the claim."""
        if storage.same_local_file(self.fs, self._path(key), claim_path):
            return storage.move_local(self.fs, self._path(key), claim_path)  # drops the entry's name
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


def parse_entry(data: bytes, key: str | None = None) -> Entry | None:
    """The state of request `key` in an entry or claim file: its last whole JSON line with
    that key (a journal holds a batch's requests; a file of one request's own may have lines
    without a key). None for a file with none (torn by a crash mid-write on a store
    without atomic writes)."""
    wanted = key.encode() if key else b""
    for line in reversed(data.splitlines()):
        if wanted not in line and b'"key"' in line:
            continue  # another request's line (a fast filter: checked again once parsed)
        try:
            value = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash mid-append
        if isinstance(value, dict) and (key is None or value.get("key", key) == key):
            return value
    return None


def _modified(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("created", 0.0)))
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
