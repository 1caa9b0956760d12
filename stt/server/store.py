"""SQLite state of the embedded server: API keys and balances, charges, asynchronous jobs.

Money is kept in integer micro-USD so that sums of many small charges stay exact.
A charge is written in the same transaction as the result it paid for (and, for
asynchronous jobs, as the job row), which is what "no charge without a result, no result
without a charge" needs. Keys are stored as sha256 hashes, never in clear.

One connection guarded by a lock: every statement is short, and SQLite serialises
writers anyway.
"""

from __future__ import annotations

import hashlib
import json
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
CREATE UNIQUE INDEX IF NOT EXISTS charges_idem ON charges(key_hash, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND kind != 'refund';
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
"""


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def to_micro(usd: float) -> int:
    return int(round(usd * MICRO))


def _now() -> str:
    return datetime.now(UTC).isoformat()


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
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
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

    def previous_answer(self, key_hash: str, idempotency_key: str | None) -> dict | None:
        """The answer already paid for under this idempotency key, if any."""
        if not idempotency_key:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT response_json, run_id FROM charges WHERE key_hash=? AND idempotency_key=? AND kind!='refund'",
                (key_hash, idempotency_key),
            ).fetchone()
        if row is None:
            return None
        if row["response_json"]:
            return {"sync": json.loads(row["response_json"])}
        return {"run_id": row["run_id"]}

    def charge_sync(self, key_hash: str, *, amount_micro: int, model: str, file_name: str | None,
                    file_size: int | None, duration_s: float, response: dict,
                    idempotency_key: str | None = None) -> None:
        """Debit and record the paid answer atomically; raises InsufficientBalance."""
        with self._lock, self._tx():
            self._debit(key_hash, amount_micro)
            self._db.execute(
                "INSERT INTO charges VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, key_hash, "sync", None, idempotency_key, model, file_name, file_size,
                 duration_s, amount_micro, json.dumps(response), _now()),
            )

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
                   idempotency_key: str | None = None) -> str:
        """Charge once and create the job in one transaction; raises InsufficientBalance."""
        run_id = uuid.uuid4().hex
        now = _now()
        with self._lock, self._tx():
            self._debit(key_hash, cost_micro)
            self._db.execute(
                "INSERT INTO charges VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, key_hash, "job", run_id, idempotency_key, model, file_name, file_size,
                 duration_s, cost_micro, None, now),
            )
            self._db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, key_hash, "pending", model, json.dumps(params), audio_path, file_name, file_size,
                 duration_s, cost_micro, None, None, idempotency_key, now, now),
            )
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
        """Mark failed and refund its charge in one transaction: a failed job costs nothing."""
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

    def unfinished_jobs(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('pending','processing') ORDER BY created_at"
            ).fetchall()
        return [_job(r) for r in rows]

    def purge_jobs(self, older_than: timedelta) -> int:
        cutoff = (datetime.now(UTC) - older_than).isoformat()
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE status IN ('completed','failed') AND updated_at < ?", (cutoff,)
            )
        return cur.rowcount

    # -- internals ----------------------------------------------------------------------

    def _debit(self, key_hash: str, amount_micro: int) -> None:
        row = self._db.execute("SELECT balance_micro FROM api_keys WHERE key_hash=?", (key_hash,)).fetchone()
        balance = int(row["balance_micro"]) if row else 0
        if amount_micro > balance:
            raise InsufficientBalance(amount_micro, balance)
        self._db.execute("UPDATE api_keys SET balance_micro=balance_micro-? WHERE key_hash=?", (amount_micro, key_hash))

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
