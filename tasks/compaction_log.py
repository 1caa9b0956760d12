"""Which part files of a table are live, once `bulkscribe compact` has merged some of them.

Compaction replaces many small parts with a few large ones. A table is a folder of
parts that readers list, and no store can change many files in one step: a reader that
lists the folder after the large parts are written and before the small ones are gone
would get every row twice, and one that lists in the other order would miss them. So
the folder's listing alone is not the truth; this log, one small JSON file next to the
parts, says which parts count:

    OUT/<table>/_compaction.json
    {"generations": [{"id": ..., "committed_at": ..., "outputs": [names], "replaced": [names]}]}

- a large part is named `compacted-<generation>-<n>.parquet`; it is live only once its
  name is among a generation's `outputs` (written before, it is invisible);
- a part named among a generation's `replaced` is dead, even while the file still exists.

Committing a compaction is one atomic write of this file (`storage.write_atomic`: a
rename on a local disk, one PUT on S3): before it, readers see exactly the small parts;
after it, exactly the large ones. The small parts are removed after the commit. Names
are paths relative to the table's folder; a run never reuses a part name (they carry its
run id and batch number), so a tombstone cannot hide a newer part.

Readers list the folder first and read the log second (the log can only be newer). One
race remains: a listing taken while the large parts were being written, with the commit
landing before the log is read; the listing then lacks committed outputs, which `live`
detects, and it lists again.

Tombstones (`replaced`) are kept for a day after their files are gone, so that a reader
holding an old listing still drops them; then they are pruned, and with them the names
of outputs that were themselves compacted again. The file stays small: one entry per
compacted part.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO

import fsspec

from tasks import storage

LOG_NAME = "_compaction.json"
COMPACTED_PREFIX = "compacted-"
#: How long the names of removed parts are remembered (see the module docstring).
TOMBSTONE_DAYS = 1.0


class StaleListing(RuntimeError):
    """The folder kept changing under the listing (a compaction committing again and again)."""


@dataclass
class Generation:
    """One committed compaction: the parts it wrote and the parts they replaced."""

    id: str
    committed_at: str
    outputs: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


@dataclass
class CompactionLog:
    generations: list[Generation] = field(default_factory=list)

    @classmethod
    def read(cls, fs: fsspec.AbstractFileSystem, folder: str) -> CompactionLog:
        path = log_path(folder)
        try:
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return cls()
        return cls([Generation(**g) for g in json.loads(raw)["generations"]])

    def write(self, fs: fsspec.AbstractFileSystem, folder: str) -> None:
        body = json.dumps({"generations": [asdict(g) for g in self.generations]}, indent=1).encode()

        def write(f: IO[bytes]) -> None:
            f.write(body)

        storage.write_atomic(fs, log_path(folder), write, durable=True)

    @property
    def dead(self) -> set[str]:
        return {name for g in self.generations for name in g.replaced}

    @property
    def outputs(self) -> set[str]:
        return {name for g in self.generations for name in g.outputs}

    def is_live(self, name: str) -> bool:
        if name in self.dead:
            return False
        return not is_compacted(name) or name in self.outputs

    def expected(self) -> set[str]:
        """Committed outputs that no later compaction replaced: a current listing has them all."""
        return self.outputs - self.dead

    def prune(self, present: set[str], now: datetime) -> None:
        """Forget parts that are gone, once the tombstone period of their generation is over."""
        horizon = now - timedelta(days=TOMBSTONE_DAYS)
        forgotten: set[str] = set()
        for g in self.generations:
            if datetime.fromisoformat(g.committed_at) < horizon:
                gone = {n for n in g.replaced if n not in present}
                g.replaced = [n for n in g.replaced if n not in gone]
                forgotten |= gone
        for g in self.generations:
            g.outputs = [n for n in g.outputs if n not in forgotten]
        self.generations = [g for g in self.generations if g.outputs or g.replaced]


def log_path(folder: str) -> str:
    return f"{folder.rstrip('/')}/{LOG_NAME}"


def is_compacted(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(COMPACTED_PREFIX)


def relative(folder: str, path: str) -> str:
    return path[len(folder.rstrip("/")) + 1:]


def live(fs: fsspec.AbstractFileSystem, folder: str, listing: Callable[[], list[str]],
         attempts: int = 5) -> list[str]:
    """The live parts among `listing()` (full paths, sorted), per the folder's log."""
    for _ in range(attempts):
        paths = listing()
        log = CompactionLog.read(fs, folder)
        names = {relative(folder, p) for p in paths}
        if log.expected() <= names:
            return [p for p in paths if log.is_live(relative(folder, p))]
        fs.invalidate_cache(folder)
    raise StaleListing(f"{folder} changed during {attempts} listings in a row; is a compaction looping?")


def now_utc() -> datetime:
    return datetime.now(UTC)
