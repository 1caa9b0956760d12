"""What was sent and not yet recorded: the pipeline's memory across crashes.

One small JSON file per outstanding request under `OUT/_ledger/`, named by its request
key and written before the request leaves (and, for asynchronous jobs, rewritten with
the runId before polling starts). It is removed only after the result is safely in the
tables. So after a crash, the entries left behind say exactly which files may have been
paid for without a recorded result:

- an asynchronous job with a runId: poll it again instead of submitting (and paying) again;
- a synchronous request: re-sent only with the same idempotency key to an API that honours
  it (the embedded server does), otherwise reported, not re-sent.

Only outstanding requests have entries, so listing the folder at the start of a run is
cheap even for a very large archive.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from tasks import storage


class Ledger:
    def __init__(self, out: str, storage_options: dict | None = None) -> None:
        self.fs, root = storage.filesystem_for(out, storage_options)
        self.root = root.rstrip("/") + "/_ledger"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}.json"

    def outstanding(self) -> dict[str, dict[str, Any]]:
        """Every entry left by earlier runs, by request key."""
        if not self.fs.exists(self.root):
            return {}
        entries = {}
        for path in self.fs.find(self.root):
            name = path.rsplit("/", 1)[-1]
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                entries[name[:-5]] = json.loads(self.fs.cat_file(path))
            except (ValueError, OSError):
                continue  # a torn entry from a crash mid-write: nothing usable in it
        return entries

    def write(self, key: str, entry: dict[str, Any]) -> None:
        entry = {**entry, "updated_at": datetime.now(UTC).isoformat()}
        data = json.dumps(entry, sort_keys=True).encode()
        storage.write_atomic(self.fs, self._path(key), lambda f: f.write(data), durable=True)

    def clear(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.fs.rm_file(self._path(key))
            except FileNotFoundError:
                pass
