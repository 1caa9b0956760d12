"""How a backfill splits its work: the parameters of one `transcribe_archive` run per shard.

Three ways, chosen by `shard_by`:

- `hash` (default): every shard lists the whole window and keeps the files whose URL
  hashes (blake2b, stable across machines and re-runs) to its index. Even shards
  whatever the layout; each shard pays for a listing of the window (cheap next to
  transcription).
- `time`: the window [modified_since, modified_before) cut into `shards` equal slices.
  Needs both dates; even only when recordings are spread evenly over time.
- `prefix`: one shard per entry of `prefixes` (folders or key prefixes under SOURCE,
  e.g. years); `shards` is then the number of prefixes.

A shard is named by its parameters: the same backfill started again yields the same
shards, and so the same idempotency keys (`shard_key`), which is what lets a re-run
find the shards that already finished and retry only the others.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

ShardBy = Literal["hash", "time", "prefix"]


class ShardPlanError(ValueError):
    """The backfill's parameters do not describe shards (one line, how to fix it)."""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def plan_shards(source: str, out: str, shards: int, shard_by: ShardBy = "hash",
                modified_since: datetime | None = None, modified_before: datetime | None = None,
                prefixes: list[str] | None = None, common: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The child-run parameters of every shard (plain JSON), in shard order."""
    base = {"source": source, "out": out, "modified_since": _iso(modified_since),
            "modified_before": _iso(modified_before), **(common or {})}
    if shard_by == "prefix":
        if not prefixes:
            raise ShardPlanError("shard_by=prefix needs prefixes, e.g. [\"2019/\", \"2020/\"]")
        return [{**base, "source": source.rstrip("/") + "/" + p.strip("/")} for p in prefixes]
    if shards < 1:
        raise ShardPlanError(f"shards must be at least 1 (got {shards})")
    if shard_by == "time":
        return [{**base, "modified_since": _iso(a), "modified_before": _iso(b)}
                for a, b in time_slices(modified_since, modified_before, shards)]
    if shard_by == "hash":
        return [{**base, "shard_index": i, "shard_count": shards} for i in range(shards)]
    raise ShardPlanError(f"unknown shard_by {shard_by!r}: hash, time or prefix")


def time_slices(since: datetime | None, before: datetime | None, n: int) -> list[tuple[datetime, datetime]]:
    """`n` equal, adjacent slices of [since, before)."""
    if since is None or before is None:
        raise ShardPlanError("shard_by=time needs both modified_since and modified_before")
    since, before = (d if d.tzinfo else d.replace(tzinfo=UTC) for d in (since, before))
    if before <= since:
        raise ShardPlanError("modified_before must be after modified_since")
    step = (before - since) / n
    edges = [since + step * i for i in range(n)] + [before]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def shard_key(deployment: str, params: dict[str, Any]) -> str:
    """The idempotency key of a shard (before its attempt number): a hash of what it does."""
    blob = json.dumps({"deployment": deployment, **params}, sort_keys=True, default=str)
    return "bulkscribe-shard-" + hashlib.sha256(blob.encode()).hexdigest()[:24]
