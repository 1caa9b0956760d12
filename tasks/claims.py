"""Claims: one run at a time per request, however many runs share an OUT.

Before a request leaves, its run claims it by creating `OUT/_ledger/<key>.claim.<gen>`
exclusively (a hard link to the batch's journal on a local disk, see `tasks.journal`; a
conditional PUT on S3). Whatever else runs against the same OUT at that moment (a nightly
run and a backfill, two shards, a user's CLI run beside a deployment) finds the claim and
leaves the request alone: nothing is sent twice.

A claim belongs to a run, and a run is alive while its lease is: every run keeps
`OUT/_ledger/_runs/<run_id>.json` fresh (a heartbeat every `HEARTBEAT_S`) and removes it
when it ends. A claim whose run has no fresh lease (or, on the same machine, whose
process is gone: kill -9 is noticed at once) is stale and can be taken over, by creating
the next generation exclusively, so two runs taking over the same stale claim cannot
both win. A finished request keeps its claim as a tombstone ("done", or its last ledger
entry, complete, once the entry's own name is gone) until no run that started before it
finished is still alive: a run that listed the archive before the request finished must
not send it again.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from tasks import storage
from tasks.journal import Journal
from tasks.ledger import ClaimFile, parse_entry

HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0

ClaimStatus = Literal["mine", "same_run", "busy", "done"]


def _process_start(pid: int) -> str:
    """The kernel's start time of a process (jiffies since boot), '' where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class Owner:
    """The process a run's claims belong to (the flow's process, whoever sends)."""

    run_id: str
    host: str
    pid: int
    pid_start: str

    @classmethod
    def this_process(cls, run_id: str) -> Owner:
        return cls(run_id, socket.gethostname(), os.getpid(), _process_start(os.getpid()))

    def gone(self) -> bool:
        """True when this machine can tell the process has ended (or its pid was reused)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return bool(self.pid_start) and _process_start(self.pid) != self.pid_start


def _now() -> float:
    return time.time()


def _stamp() -> str:
    return datetime.now(UTC).isoformat()


class RunLease:
    """`with RunLease(out, owner):` keeps the run's lease fresh while the run goes on."""

    def __init__(self, out: str, owner: Owner, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = storage.filesystem_for(out, storage_options)
        self.path = f"{root.rstrip('/')}/_ledger/_runs/{owner.run_id}.json"
        self.owner = owner
        self.started = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        data = json.dumps({**asdict(self.owner), "started": self.started, "alive": _now()}).encode()
        storage.write_atomic(self.fs, self.path, lambda f: f.write(data))

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except OSError:
                pass  # a missed beat is tolerated; STALE_AFTER_S spans several

    def __enter__(self) -> RunLease:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="bulkscribe-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    holder: str = ""  # run id of the run that holds it (busy/same_run)


class Claims:
    """The claims of one OUT, as seen by one run's process (or one of its batch workers)."""

    def __init__(self, out: str, owner: Owner, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, root = storage.filesystem_for(out, storage_options)
        self.root = root.rstrip("/") + "/_ledger"
        self.owner = owner
        #: Carried by every claim and ledger entry: who to ask whether the request is still in hand.
        self.owner_fields: dict[str, Any] = asdict(owner)
        self._held: dict[str, int] = {}
        self._journal = Journal(self.root, owner.run_id) if storage.is_local(self.fs) else None
        self._links = True
        self._leases: dict[str, tuple[float, dict[str, Any] | None]] = {}

    @property
    def held(self) -> set[str]:
        """Request keys this object has claimed and not yet released or finished."""
        return set(self._held)

    def _path(self, key: str, gen: int) -> str:
        return f"{self.root}/{key}.claim.{gen}"

    def acquire(self, key: str, entry: dict[str, Any] | None = None) -> Claim:
        """Claim `key` for this run, take over a stale claim, or say who holds it.

        `entry`: the request's first ledger entry, carried by the claim (fsynced) so that
        `Ledger.publish` can make it the entry without writing another file."""
        gen = 0
        carried = {**entry, "state": "sent"} if entry is not None else {"state": "active"}
        while True:
            body = json.dumps({**carried, **self.owner_fields, "key": key, "at": _stamp()}).encode()
            if self._create(key, self._path(key, gen), body, durable=entry is not None):
                self._held[key] = gen
                return Claim("mine")
            gen, current = self._latest(key)
            if current is None:  # released meanwhile, or being claimed by this batch: try again
                gen = 0
                time.sleep(0.001)
                continue
            if self._finished(key, gen, current):
                return Claim("done", str(current.get("run_id", "")))
            holder = str(current.get("run_id", ""))
            if holder == self.owner.run_id:
                return Claim("same_run", holder)
            if self._alive(current):
                return Claim("busy", holder)
            gen += 1  # stale: take over with the next generation

    def _create(self, key: str, path: str, body: bytes, *, durable: bool) -> bool:
        """Create the claim file exclusively: on a local disk a link to the batch's journal,
        `body` appended to it (see `tasks.journal`), else a file of its own."""
        if durable and self._journal is not None and self._links:
            try:
                created = self._journal.claim(key, path, body)
            except OSError:  # no hard links here (or too many): files of their own from now on
                self._links, created = False, None
            if created is not None:
                return created
        return storage.create_exclusive(self.fs, path, body, durable=durable)

    def close(self) -> None:
        """The batch is over (its claims released or finished)."""
        if self._journal is not None:
            self._journal.close()

    def orphan_journals(self) -> list[str]:
        """Journal names left by runs that ended without closing them (kill -9, a crash)."""
        folder = f"{self.root}/_journals"
        if not self.fs.exists(folder):
            return []
        orphans = []
        for path in self.fs.ls(folder, detail=False):
            run_id = str(path).rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
            lease = self.lease(run_id)
            if run_id != self.owner.run_id and not (lease and self._alive({**lease, "run_id": run_id})):
                orphans.append(str(path))
        return orphans

    def _finished(self, key: str, gen: int, claim: dict[str, Any]) -> bool:
        """A tombstone: written as one ("done"), or a complete ledger entry that the claim
        holds once the entry's own name is gone (while both names remain, the request is
        answered and its rows are not written yet: see `Ledger.retire`)."""
        if claim.get("state") == "done":
            return True
        entry = f"{self.root}/{key}.json"
        return claim.get("complete") is True and not storage.same_local_file(self.fs, self._path(key, gen), entry)

    def _latest(self, key: str) -> tuple[int, dict[str, Any] | None]:
        prefix = f"{self.root}/{key}.claim."
        gens = []
        for path in self.fs.glob(prefix + "*"):
            tail = path.rsplit(".", 1)[-1]
            if tail.isdigit():
                gens.append(int(tail))
        for gen in sorted(gens, reverse=True):
            try:
                body = parse_entry(storage.cat(self.fs, self._path(key, gen)), key)
            except FileNotFoundError:
                continue
            if body is not None:
                return gen, body
        return 0, None

    def _alive(self, claim: dict[str, Any]) -> bool:
        owner = Owner(str(claim.get("run_id", "")), str(claim.get("host", "")), int(claim.get("pid", 0)),
                      str(claim.get("pid_start", "")))
        if owner.gone():
            return False
        lease = self.lease(owner.run_id)
        return lease is not None and _now() - float(lease.get("alive", 0)) < STALE_AFTER_S

    def lease(self, run_id: str) -> dict[str, Any] | None:
        """A run's lease, read at most every few seconds."""
        cached = self._leases.get(run_id)
        if cached and _now() - cached[0] < 5.0:
            return cached[1]
        try:
            value: dict[str, Any] | None = json.loads(self.fs.cat_file(f"{self.root}/_runs/{run_id}.json"))
        except (FileNotFoundError, ValueError):
            value = None
        self._leases[run_id] = (_now(), value)
        return value

    def release(self, key: str) -> None:
        """Give the request up (nothing was paid, or the ledger entry says what was)."""
        gen = self._held.pop(key, None)
        if gen is None:
            return
        for g in range(gen, -1, -1):
            try:
                self.fs.rm_file(self._path(key, g))
            except FileNotFoundError:
                pass

    def held_path(self, key: str) -> str | None:
        """The file of a claim this object holds."""
        gen = self._held.get(key)
        return None if gen is None else self._path(key, gen)

    def finish(self, key: str, *, retired: bool = False) -> None:
        """The request's rows are written: leave a tombstone for runs that started earlier
        (`retired`: the ledger entry already became it, see `Ledger.retire`)."""
        gen = self._held.pop(key, None)
        if gen is None or retired:
            return
        body = json.dumps({**asdict(self.owner), "state": "done", "at": _stamp(), "done": _now()}).encode()
        storage.write_atomic(self.fs, self._path(key, gen), lambda f: f.write(body))

    def live_run_starts(self) -> list[float]:
        """Start times of the other runs whose lease is fresh."""
        starts: list[float] = []
        folder = f"{self.root}/_runs"
        if not self.fs.exists(folder):
            return starts
        for path in self.fs.ls(folder, detail=False):
            run_id = str(path).rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
            lease = self.lease(run_id)
            if run_id == self.owner.run_id or lease is None:
                continue
            if self._alive({**lease, "run_id": run_id}):
                starts.append(float(lease.get("started", 0.0)))
        return starts

    def collectable(self, files: list[ClaimFile], done_keys: set[str]) -> list[str]:
        """Claim files of finished requests that no live run can still need: older than the
        start of every other live run (a run that started later found the rows)."""
        oldest = min(self.live_run_starts(), default=float("inf"))
        return [c.path for c in files if c.key in done_keys and c.modified < oldest]
