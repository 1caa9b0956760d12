"""`bulkscribe compact`: merge a table's many small parts into a few large ones.

A run writes one part per batch and table, so a 100,000-file archive at 50 files per
batch leaves 2,000 parts per table, and every reader pays for opening each of them.
Compaction reads the small parts in groups of about `target_bytes` (128 MiB of Parquet
by default: large enough that a query opens few files, small enough that a group fits
in memory, which takes roughly ten times its Parquet size), and writes each group as
one part through `tasks.tables.write_part`: sorted by source, with row-group statistics,
written atomically. Parts already larger than half the target are left alone.

The switch from small to large parts is committed by one write of the table's
compaction log (`tasks.compaction_log`, which says why), then the small parts are
removed. A crash at any step leaves a consistent table for every reader that lists
parts with `tasks.tables.part_files` (the pipeline, the notebook, evaluate, export);
the next `compact` finishes the removal or discards the uncommitted output. Readers
that glob the folder themselves (duckdb, `pl.scan_parquet("out/words/**")`) see the
small and the large parts at once between the commit and the end of the removal, or
after a crashed compaction until the next one: run `compact` while nothing reads with
a bare glob, and one `compact` at a time. Runs may write new parts meanwhile: they are
not among the parts being merged, so they stay as they are.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds

from tasks import storage, tables
from tasks.compaction_log import (
    COMPACTED_PREFIX,
    CompactionLog,
    Generation,
    is_compacted,
    now_utc,
    relative,
)
from tasks.rows import SCHEMAS

TARGET_BYTES = 128 * 1024 * 1024


@dataclass
class Plan:
    """One table's compaction, step by step: plan -> write_outputs -> commit -> remove_replaced."""

    out: str
    table: str
    folder: str
    generation: str
    groups: list[list[str]]
    storage_options: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)
    rows: int = 0
    parts_before: int = 0
    bytes_in: int = 0

    @property
    def inputs(self) -> list[str]:
        return [p for g in self.groups for p in g]


@dataclass(frozen=True)
class Result:
    table: str
    parts_before: int
    parts_after: int
    merged: int
    rows: int
    bytes_in: int
    bytes_out: int


def compact(out: str, *, table_names: tuple[str, ...] = tables.TABLES, target_bytes: int = TARGET_BYTES,
            storage_options: dict[str, Any] | None = None) -> list[Result]:
    """Compact every table of OUT; each table is committed on its own."""
    results = []
    for table in table_names:
        plan_ = plan(out, table, target_bytes=target_bytes, storage_options=storage_options)
        write_outputs(plan_)
        commit(plan_)
        remove_replaced(plan_)
        fs, _ = storage.filesystem_for(out, storage_options)
        bytes_out = sum(int(fs.size(p)) for p in plan_.outputs)
        results.append(Result(table, plan_.parts_before, plan_.parts_before - len(plan_.inputs) + len(plan_.outputs),
                              len(plan_.inputs), plan_.rows, plan_.bytes_in, bytes_out))
    return results


def plan(out: str, table: str, *, target_bytes: int = TARGET_BYTES,
         storage_options: dict[str, Any] | None = None) -> Plan:
    """Finish what an earlier compaction left, then group the small live parts."""
    fs, root = storage.filesystem_for(out, storage_options)
    folder = f"{root.rstrip('/')}/{table}"
    sizes = recover(fs, folder)
    live = tables.part_files(out, table, storage_options)
    small = [p for p in live if sizes.get(p, 0) < target_bytes // 2]
    groups = [g for g in _groups(small, sizes, target_bytes) if len(g) > 1]
    generation = f"{now_utc():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    return Plan(out, table, folder, generation, groups, storage_options, parts_before=len(live),
                bytes_in=sum(sizes.get(p, 0) for g in groups for p in g))


def write_outputs(p: Plan) -> None:
    """Write each group as one large part; invisible to `part_files` until `commit`."""
    fs, _ = storage.filesystem_for(p.out, p.storage_options)
    for i, group in enumerate(p.groups):
        data = in_source_order(ds.dataset(group, schema=SCHEMAS[p.table], format="parquet", filesystem=fs).to_table())
        written = tables.write_part(p.out, p.table, data, part_name=f"{COMPACTED_PREFIX}{p.generation}-{i:05d}",
                                    storage_options=p.storage_options)
        if written is not None:
            p.outputs.append(written)
        p.rows += data.num_rows


def commit(p: Plan) -> None:
    """The one atomic step: from now on readers see the outputs instead of the inputs."""
    if not p.groups:
        return
    fs, _ = storage.filesystem_for(p.out, p.storage_options)
    log = CompactionLog.read(fs, p.folder)
    log.generations.append(Generation(
        id=p.generation, committed_at=now_utc().isoformat(),
        outputs=[relative(p.folder, o) for o in p.outputs], replaced=[relative(p.folder, i) for i in p.inputs]))
    log.write(fs, p.folder)


def remove_replaced(p: Plan) -> None:
    if not p.inputs:
        return
    fs, _ = storage.filesystem_for(p.out, p.storage_options)
    fs.rm(p.inputs)
    fs.invalidate_cache(p.folder)


def in_source_order(data: pa.Table) -> pa.Table:
    """The rows in source order without sorting them, when that is a matter of putting
    whole record batches in order: every part is sorted, and the parts of one run hold
    consecutive files of a sorted discovery, so their ranges rarely overlap. When they
    do, the table is returned as it is and `write_part` sorts it."""
    column = tables.SORT_COLUMN
    runs = sorted(((b.column(column)[0].as_py(), b.column(column)[-1].as_py(), i, b)
                   for i, b in enumerate(data.to_batches()) if b.num_rows), key=lambda r: r[:3])
    if all(prev[1] <= nxt[0] for prev, nxt in zip(runs, runs[1:])):
        return pa.Table.from_batches([r[3] for r in runs], schema=data.schema)  # write_part checks the order
    return data


def recover(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, int]:
    """Remove what a crashed compaction left: replaced parts still present, and output
    that was never committed. Then forget tombstones past their period. Returns the
    sizes of the parts left."""
    log = CompactionLog.read(fs, folder)
    sizes = _sizes(fs, folder)
    names = {relative(folder, p): p for p in sizes}
    dead, outputs = log.dead, log.outputs
    leftovers = {path for name, path in names.items()
                 if name in dead or (is_compacted(name) and name not in outputs)}
    if leftovers:
        fs.rm(sorted(leftovers))
        fs.invalidate_cache(folder)
    before = len(log.generations), sum(len(g.replaced) + len(g.outputs) for g in log.generations)
    log.prune({n for n in names if names[n] not in leftovers}, now_utc())
    after = len(log.generations), sum(len(g.replaced) + len(g.outputs) for g in log.generations)
    if after != before:
        log.write(fs, folder)
    return {p: n for p, n in sizes.items() if p not in leftovers}


def _sizes(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, int]:
    """Size of every Parquet part under the folder, from one listing."""
    if not fs.exists(folder):
        return {}
    found = fs.find(folder, detail=True)
    return {path: int(info.get("size") or 0) for path, info in found.items()
            if path.endswith(".parquet") and not path.rsplit("/", 1)[-1].startswith(".")}


def _groups(paths: list[str], sizes: dict[str, int], target_bytes: int) -> list[list[str]]:
    """Consecutive parts (in name order, so roughly in time order) summing to about the target."""
    groups: list[list[str]] = []
    current: list[str] = []
    total = 0
    for p in paths:
        if current and total + sizes.get(p, 0) > target_bytes:
            groups.append(current)
            current, total = [], 0
        current.append(p)
        total += sizes.get(p, 0)
    if current:
        groups.append(current)
    return groups
