"""SQLite state of the embedded server: API keys and balances, charges, asynchronous jobs.

Money is kept in integer micro-USD so that sums of many small charges stay exact.
A charge is written in the same transaction as the result it paid for (and, for
asynchronous jobs, as the job row), which is what "no charge without a result, no result
without a charge" needs. Keys are stored as sha256 hashes, never in clear.

An Idempotency-Key names one request (its audio and options, `request_hash`) and keeps
its paid answer, or its job, for replay. A request that fails or is refunded records
nothing, so its key can be used again; a purged job releases its key with it.

The database holds every transcript: it is created 0600, and so are its WAL files
(SQLite gives them the database's mode).

One connection guarded by a lock: every statement is short, and SQLite serialises
writers anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MICRO = 1_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    balance_micro INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    kind TEXT NOT NULL,              -- sync | job | refund
    run_id TEXT,
    idempotency_key TEXT,
    model TEXT NOT NULL,
    file_name TEXT,
    file_size INTEGER,
    duration_s REAL,
    amount_micro INTEGER NOT NULL,
    response_json TEXT,              -- the answer that was paid for (sync)
    created_at TEXT NOT NULL
);
DROP INDEX IF EXISTS charges_idem;   -- keys now live in `idempotency`, released on failure
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    status TEXT NOT NULL,            -- pending | processing | completed | failed
    model TEXT NOT NULL,
    params_json TEXT NOT NULL,
    audio_path TEXT,
    file_name TEXT,
    file_size INTEGER,
    duration_s REAL,
    cost_micro INTEGER NOT NULL,
    result_json TEXT,
    error TEXT,
    idempotency_key TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key_hash TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT,               -- NULL: recorded before request hashes existed
    run_id TEXT,                     -- the job it created (asynchronous models)
    response_json TEXT,              -- the answer it paid for (synchronous models)
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_hash, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idempotency_run ON idempotency(run_id) WHERE run_id IS NOT NULL;
-- Keys recorded before the idempotency table existed keep replaying their answer.
INSERT OR IGNORE INTO idempotency
    SELECT c.key_hash, c.idempotency_key, NULL, c.run_id, c.response_json, c.created_at FROM charges c
    WHERE c.idempotency_key IS NOT NULL AND c.kind != 'refund'
      AND (c.run_id IS NULL OR c.run_id IN (SELECT run_id FROM jobs WHERE status != 'failed'));
"""


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def to_micro(usd: float) -> int:
    return int(round(usd * MICRO))


def _now() -> str:
    return datetime.now(UTC).isoformat()


class KeyAlreadyUsed(Exception):
    """Another request recorded this Idempotency-Key first (they ran at the same time)."""


@dataclass(frozen=True)
class IdempotentRecord:
    request_hash: str | None
    response: dict[str, Any] | None  # a synchronous answer
    run_id: str | None  # or the job it created


class InsufficientBalance(Exception):
    def __init__(self, needed_micro: int, balance_micro: int) -> None:
        super().__init__(
            f"insufficient balance: this request costs {needed_micro / MICRO:.6f} USD, "
            f"the balance is {balance_micro / MICRO:.6f} USD"
        )


@dataclass
class Job:
    run_id: str
    key_hash: str
    status: str
    model: str
    params: dict[str, Any]
    audio_path: str | None
    file_name: str | None
    file_size: int | None
    duration_s: float | None
    cost_micro: int
    result: dict[str, Any] | None
    error: str | None
    created_at: str
    updated_at: str


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            _create_private(Path(self.path))
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- keys ---------------------------------------------------------------------------

    def ensure_key(self, api_key: str, balance_usd: float) -> None:
        """Create the key with that balance; an existing key keeps its balance."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO api_keys VALUES (?, ?, ?)", (hash_key(api_key), to_micro(balance_usd), _now())
            )

    def key_exists(self, key_hash: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM api_keys WHERE key_hash=?", (key_hash,)).fetchone() is not None

    def balance_micro(self, key_hash: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT balance_micro FROM api_keys WHERE key_hash=?", (key_hash,)).fetchone()
        return int(row["balance_micro"]) if row else 0

    # -- synchronous charges ------------------------------------------------------------

    def idempotent_record(self, key_hash: str, idempotency_key: str) -> IdempotentRecord | None:
        """What this key's first request recorded: its paid answer or its job, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT request_hash, run_id, response_json FROM idempotency WHERE key_hash=? AND idempotency_key=?",
                (key_hash, idempotency_key),
            ).fetchone()
        if row is None:
            return None
        response = json.loads(row["response_json"]) if row["response_json"] else None
        return IdempotentRecord(row["request_hash"], response, row["run_id"])

    def charge_sync(self, key_hash: str, *, amount_micro: int, model: str, file_name: str | None,
                    file_size: int | None, duration_s: float, response: dict,
                    idempotency: tuple[str, str] | None = None) -> None:
        """Debit and record the paid answer atomically (and, under `idempotency` = (key,
        request hash), the answer for replay); raises InsufficientBalance or KeyAlreadyUsed."""
        now = _now()
        with self._lock, self._tx():
            self._debit(key_hash, amount_micro)
            self._db.execute(
                "INSERT INTO charges VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, key_hash, "sync", None, idempotency and idempotency[0], model, file_name,
                 file_size, duration_s, amount_micro, json.dumps(response), now),
            )
            if idempotency:
                self._remember(key_hash, idempotency, None, json.dumps(response), now)

    def charges(self, key_hash: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, run_id, idempotency_key, model, file_name, file_size, duration_s, amount_micro, created_at "
                "FROM charges WHERE key_hash=? ORDER BY created_at", (key_hash,),
            ).fetchall()
        return [dict(r) for r in rows]

    # -- asynchronous jobs --------------------------------------------------------------

    def create_job(self, key_hash: str, *, model: str, params: dict, audio_path: str, file_name: str | None,
                   file_size: int | None, duration_s: float, cost_micro: int,
                   idempotency: tuple[str, str] | None = None) -> str:
        """Charge once and create the job in one transaction; raises InsufficientBalance or KeyAlreadyUsed."""
        run_id = uuid.uuid4().hex
        now = _now()
        idem_key = idempotency[0] if idempotency else None
        with self._lock, self._tx():
            self._debit(key_hash, cost_micro)
            self._db.execute(
                "INSERT INTO charges VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, key_hash, "job", run_id, idem_key, model, file_name, file_size,
                 duration_s, cost_micro, None, now),
            )
            self._db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, key_hash, "pending", model, json.dumps(params), audio_path, file_name, file_size,
                 duration_s, cost_micro, None, None, idem_key, now, now),
            )
            if idempotency:
                self._remember(key_hash, idempotency, run_id, None, now)
        return run_id

    def get_job(self, run_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE run_id=?", (run_id,)).fetchone()
        return _job(row) if row else None

    def set_job_status(self, run_id: str, status: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET status=?, updated_at=? WHERE run_id=?", (status, _now(), run_id))

    def complete_job(self, run_id: str, result: dict) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status='completed', result_json=?, audio_path=NULL, updated_at=? WHERE run_id=?",
                (json.dumps(result), _now(), run_id),
            )

    def fail_job(self, run_id: str, error: str) -> None:
        """Mark failed, refund its charge and release its Idempotency-Key in one transaction:
        a failed job costs nothing, and the same request may be submitted again."""
        with self._lock, self._tx():
            row = self._db.execute(
                "SELECT key_hash, cost_micro, model, status FROM jobs WHERE run_id=?", (run_id,)
            ).fetchone()
            if row is None or row["status"] in ("completed", "failed"):
                return
            self._db.execute(
                "UPDATE jobs SET status='failed', error=?, audio_path=NULL, updated_at=? WHERE run_id=?",
                (error, _now(), run_id),
            )
            self._db.execute("UPDATE api_keys SET balance_micro=balance_micro+? WHERE key_hash=?",
                             (row["cost_micro"], row["key_hash"]))
            self._db.execute(
                "INSERT INTO charges VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, row["key_hash"], "refund", run_id, None, row["model"], None, None, None,
                 -row["cost_micro"], None, _now()),
            )
            self._db.execute("DELETE FROM idempotency WHERE run_id=?", (run_id,))

    def unfinished_jobs(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('pending','processing') ORDER BY created_at"
            ).fetchall()
        return [_job(r) for r in rows]

    def purge_jobs(self, older_than: timedelta) -> int:
        """Forget finished jobs older than that, and the Idempotency-Keys that named them."""
        cutoff = (datetime.now(UTC) - older_than).isoformat()
        finished = "SELECT run_id FROM jobs WHERE status IN ('completed','failed') AND updated_at < ?"
        with self._lock, self._tx():
            self._db.execute(f"DELETE FROM idempotency WHERE run_id IN ({finished})", (cutoff,))
            cur = self._db.execute(f"DELETE FROM jobs WHERE run_id IN ({finished})", (cutoff,))
        return cur.rowcount

    # -- internals ----------------------------------------------------------------------

    def _debit(self, key_hash: str, amount_micro: int) -> None:
        row = self._db.execute("SELECT balance_micro FROM api_keys WHERE key_hash=?", (key_hash,)).fetchone()
        balance = int(row["balance_micro"]) if row else 0
        if amount_micro > balance:
            raise InsufficientBalance(amount_micro, balance)
        self._db.execute("UPDATE api_keys SET balance_micro=balance_micro-? WHERE key_hash=?", (amount_micro, key_hash))

    def _remember(self, key_hash: str, idempotency: tuple[str, str], run_id: str | None,
                  response_json: str | None, now: str) -> None:
        idem_key, request_hash = idempotency
        try:
            self._db.execute("INSERT INTO idempotency VALUES (?,?,?,?,?,?)",
                             (key_hash, idem_key, request_hash, run_id, response_json, now))
        except sqlite3.IntegrityError:
            raise KeyAlreadyUsed(idem_key) from None

    def _tx(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()


def _job(row: sqlite3.Row) -> Job:
    return Job(
        run_id=row["run_id"], key_hash=row["key_hash"], status=row["status"], model=row["model"],
        params=json.loads(row["params_json"]), audio_path=row["audio_path"], file_name=row["file_name"],
        file_size=row["file_size"], duration_s=row["duration_s"], cost_micro=row["cost_micro"],
        result=json.loads(row["result_json"]) if row["result_json"] else None, error=row["error"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def _create_private(path: Path) -> None:
    """The database file (and its folder) readable by this user only, created so (no window
    in which it is world-readable); an existing file is made private too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and p.stat().st_mode & 0o077:
            p.chmod(0o600)
