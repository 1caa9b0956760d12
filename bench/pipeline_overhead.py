"""Overhead of the pipeline (Prefect flow, tasks, ledger, Parquet) over a bare HTTP loop.

Run:  .venv/bin/python bench/pipeline_overhead.py [--files 1000] [--concurrency 4]

One embedded server (`EmbeddedServer`, fast settings: model "Wizper", beam 1, VAD on,
a large MAX_QUEUE so nothing is answered 503) serves both sides, in one run:

  (b) flow: the flow `transcribe_archive` as `bulkscribe run` calls it
      (`flows.transcribe_archive.run_with_settings`) over a folder of N tiny WAV files,
      fresh OUT dir, `Settings(api_url=..., api_key=..., model="Wizper", language=...,
      concurrency=C, parallel_batches=P, batch_size=B, requests_per_second=None,
      api_idempotency_keys=True)`, against the temporary Prefect API that `bulkscribe run`
      starts when no PREFECT_API_URL is set (`flows.prefect_api.temporary_prefect_api`, its
      database in a private PREFECT_HOME; its start-up is timed and reported separately,
      not counted). Like `bulkscribe run`, that leaves out Prefect's flow-run heartbeats
      (see flows/prefect_api.py); `--heartbeats` keeps them, as a run against a Prefect
      server has them: each flow run then ends on a whole second after its start. The time counted is the wall time
      of the flow call: discovery, the content hash of every file (its request key),
      claims and ledger entries under OUT/_ledger, requests, Parquet parts.
  (a) baseline: a bare asyncio + httpx loop sending the same N multipart requests
      (same bytes, file names and form fields, one idempotency key per request like the
      flow, but fresh ones so the server does not replay the flow's answers) with
      C x P requests in flight, which is the flow's total concurrency. It posts `files=`
      and `data=` as httpx does by default, streaming the multipart body in a dozen
      pieces; the flow's client (stt.client) sends the same bytes in one buffer, which
      costs it about half the client CPU per request (see `stt.client._multipart`).

The server is warmed up first (untimed requests), and so is Prefect (one small flow run
over a few separate files, untimed but reported). Then `--rounds` rounds (default 4) in
ABBA order, (b) (a) (a) (b) ..., so that drift in the load of this shared machine hits
both sides alike (a round is skipped if it would end the run past `--max-seconds`);
each side's files/s is its total files over its total time. Before every flow run but
the first, the files are rewritten with new bytes (untimed), hence new content hashes
and request keys, so that the server transcribes them again instead of replaying its
answers to the earlier run's idempotency keys. Four rounds by default: on this shared
2-core VM the ratio of a single ABBA pair (2 rounds) swung between 0.82 and 1.02 for the
same code (11 runs); more rounds narrow that spread around the same mean.

The clips. Whisper's encoder costs ~1.7 s of CPU per request on this 2-core machine
whatever the clip length (it always encodes a 30 s window), so 1,000 clips of speech
would take half an hour per side. By default every file is therefore a 0.6 s stretch of
the *room tone* of /work/shared/audio/timit_LDC93S1.wav (its first 0.15 s, before the
speech starts, repeated 4x): a real recording that the server's VAD finds no speech in,
so with a fixed language ("en", no language detection) the server only decodes, runs the
VAD and answers (15-20 ms of server CPU per request measured here, more under load). `--clip speech` takes 0.5-1.5 s of
the speech instead (for a faster machine; use --files 50 here). Each copy differs from
the others in a few samples (`bench._common.distinct_copy`), so the bytes, the content
hashes and the request keys differ, and in its mtime.

Printed: files/s of each side, each round's own ratio (how much the machine's drift moves
it within one run), CPU used per file by this process (flow or loop), by the
STT server and by the Prefect API server (harness subprocess), the server-side timeline
of each side (when the first and last answers were recorded by the server, and how long
the server sat without recording an answer for more than 3x the median interval), and
as the very last line `ratio=<(b)/(a) files/s, 3 decimals>` (goal >= 0.9).

`--profile` runs cProfile with a thread-CPU clock in every thread of the flow process
during the first (b) and prints where its CPU goes (it slows the flow down: a separate
run for *where*, not for the ratio). `--trace` wraps a few project functions in this
process (no file is changed) to timestamp tasks, requests, ledger and Parquet writes
during the first (b), and prints how many requests were in flight over time and what
each batch task spent outside HTTP.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import wave  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench._common import BenchError, distinct_copy, run_main, wav_bytes  # noqa: E402

SOURCE_WAV = Path("/work/shared/audio/timit_LDC93S1.wav")
FALLBACK_WAV = REPO_ROOT / "samples" / "timit_LDC93S1.wav"
RATIO_GOAL = 0.9


# -- the files ----------------------------------------------------------------------------


def base_pcm(kind: str) -> tuple[np.ndarray, int]:
    src = SOURCE_WAV if SOURCE_WAV.is_file() else FALLBACK_WAV
    with wave.open(str(src)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, "expected 16-bit mono"
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if kind == "tone":  # the room tone before the first word, 0.15 s, x4 -> 0.6 s
        return np.tile(x[: int(0.15 * sr)], 4).copy(), sr
    return x[int(0.5 * sr): int(1.5 * sr)].copy(), sr  # "speech": 1.0 s of the sentence


def make_files(folder: Path, n: int, kind: str, first_index: int = 0) -> list[Path]:
    """n distinct copies of the clip (copy i = `distinct_copy(pcm, i)`), each with its own
    mtime, so that bytes, content hashes and size+mtime fingerprints all differ."""
    pcm, sr = base_pcm(kind)
    folder.mkdir(parents=True, exist_ok=True)
    base_ns = time.time_ns() - 10**12  # in the past, 1 ms apart
    paths = []
    for k, i in enumerate(range(first_index, first_index + n)):
        path = folder / f"clip_{k:05d}.wav"
        path.write_bytes(wav_bytes(distinct_copy(pcm, i), sr))
        os.utime(path, ns=(base_ns + i * 1_000_000, base_ns + i * 1_000_000))
        paths.append(path)
    return paths


@dataclass
class Phase:
    side: str  # "a" baseline | "b" flow
    wall: float
    cpu: dict[str, float]
    window: tuple[datetime, datetime]


# -- CPU accounting from /proc --------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


class CpuMeter:
    """CPU seconds of this process, of the STT server, and of every other descendant
    of this process (the Prefect API server of the test harness)."""

    def __init__(self, stt_pid: int) -> None:
        self.stt_pid = stt_pid

    def snapshot(self) -> dict[str, float]:
        stt_tree = {self.stt_pid} | descendants(self.stt_pid)
        others = descendants(os.getpid()) - stt_tree
        return {
            "self": time.process_time(),
            "stt": sum(proc_cpu_s(p) for p in stt_tree),
            "prefect": sum(proc_cpu_s(p) for p in others),
        }


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


# -- (a) the baseline ------------------------------------------------------------------------


async def baseline(api_url: str, api_key: str, paths: list[Path], model: str, language: str,
                   in_flight: int, tag: str) -> int:
    """The same multipart requests as STTClient.transcribe_bytes, `in_flight` at once."""
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    timeout = httpx.Timeout(connect=15.0, read=1800.0, write=300.0, pool=None)
    ok = 0
    async with httpx.AsyncClient(base_url=api_url.rstrip("/") + "/", limits=limits, timeout=timeout,
                                 headers={"x-api-key": api_key, "user-agent": "bulkscribe/0.1"},
                                 trust_env=False) as http:
        queue = collections.deque(paths)

        async def worker() -> None:
            nonlocal ok
            while queue:
                path = queue.popleft()
                data = path.read_bytes()
                r = await http.post(
                    "transcribe",
                    files={"audio": (path.name, data, "application/octet-stream")},
                    data={"model": model, "language": language},
                    headers={"idempotency-key": uuid.uuid4().hex},
                )
                body = r.json()
                if r.status_code != 200 or "transcription" not in body:
                    raise RuntimeError(f"{tag}: {path.name}: HTTP {r.status_code} {str(body)[:200]}")
                ok += 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return ok


def round_ratios(phases: list[Phase]) -> str:
    """Each round's own ratio: how far the machine's drift moved the figure within this run."""
    pairs = [phases[i: i + 2] for i in range(0, len(phases) - 1, 2)]
    ratios = [next(p.wall for p in pair if p.side == "a") / next(p.wall for p in pair if p.side == "b")
              for pair in pairs if {p.side for p in pair} == {"a", "b"}]
    return " ".join(f"{r:.3f}" for r in ratios) or "-"


# -- server-side timeline -------------------------------------------------------------------------


def server_charges(api_url: str, api_key: str) -> list[datetime]:
    r = httpx.get(api_url.rstrip("/") + "/usage", headers={"x-api-key": api_key}, trust_env=False, timeout=60)
    r.raise_for_status()
    return sorted(datetime.fromisoformat(c["created_at"]) for c in r.json()["charges"])


def timeline(charges: list[datetime], start: datetime, end: datetime) -> dict[str, float]:
    """When the server recorded the phase's answers, relative to the phase's own start/end."""
    ts = [t for t in charges if start <= t <= end]
    if len(ts) < 3:
        return {"n": len(ts)}
    gaps = [(b - a).total_seconds() for a, b in zip(ts, ts[1:])]
    med = statistics.median(gaps)
    long = [g for g in gaps if g > 3 * med]
    return {
        "n": len(ts),
        "lead_s": (ts[0] - start).total_seconds(),       # phase start -> first answer recorded
        "tail_s": (end - ts[-1]).total_seconds(),        # last answer recorded -> phase end
        "span_s": (ts[-1] - ts[0]).total_seconds(),
        "median_gap_ms": med * 1000,
        "long_gaps": len(long),                           # intervals > 3x the median
        "long_gap_excess_s": sum(g - med for g in long),  # time they add over the median
        "max_gap_s": max(gaps),
    }


# -- timestamps inside the flow (--trace) -------------------------------------------------------


class Tracer:
    """Wraps a few project functions (in this process only, no file is changed) to record
    when things happen: task submitted / started / ended, HTTP request sent / answered,
    ledger writes, Parquet writes. Costs a perf_counter and a list append per event."""

    def __init__(self) -> None:
        self.events: dict[str, list] = collections.defaultdict(list)
        self._saved: list[tuple[object, str, object]] = []

    def _patch(self, owner, name, wrapper) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, wrapper)

    def install(self) -> None:
        import functools

        import flows.transcribe_archive as fta
        import stt.client
        import tasks.batch
        import tasks.claims
        import tasks.ledger
        import tasks.sending
        import tasks.storage
        import tasks.tables
        import tasks.upload

        ev = self.events
        clock = time.perf_counter

        task = tasks.batch.transcribe_batch
        fn, runner_for = task.fn, fta.task_runner_for

        @functools.wraps(fn)
        def task_fn(files, cfg, batch_no):
            t0 = clock()
            try:
                return fn(files, cfg, batch_no)
            finally:
                ev["task"].append((batch_no, t0, clock(), threading.get_ident()))

        def runner_for_w(settings):
            runner = runner_for(settings)
            submit = runner.submit

            def submit_w(task_, parameters=None, *a, **kw):
                t0 = clock()
                fut = submit(task_, parameters, *a, **kw)
                ev["submit"].append(((parameters or {}).get("batch_no"), t0, clock()))
                return fut

            runner.submit = submit_w
            return runner

        send_all = tasks.batch._send_all

        async def send_all_w(*a, **kw):
            t0 = clock()
            try:
                return await send_all(*a, **kw)
            finally:
                ev["send_all"].append((t0, clock()))

        def timed(name, f):
            @functools.wraps(f)
            def w(*a, **kw):
                t0, c0 = clock(), time.thread_time()
                try:
                    return f(*a, **kw)
                finally:
                    ev[name].append((t0, clock(), time.thread_time() - c0))
            return w

        tb = stt.client.STTClient.transcribe_bytes

        @functools.wraps(tb)
        async def tb_w(*a, **kw):
            t0 = clock()
            try:
                return await tb(*a, **kw)
            finally:
                ev["http"].append((t0, clock(), threading.get_ident()))

        self._patch(task, "fn", task_fn)
        self._patch(fta, "task_runner_for", runner_for_w)
        self._patch(tasks.batch, "_send_all", send_all_w)
        self._patch(tasks.tables, "write_part", timed("write_part", tasks.tables.write_part))
        self._patch(tasks.ledger.Ledger, "write", timed("ledger_write", tasks.ledger.Ledger.write))
        self._patch(tasks.ledger.Ledger, "clear", timed("ledger_clear", tasks.ledger.Ledger.clear))
        self._patch(tasks.claims.Claims, "acquire", timed("claim", tasks.claims.Claims.acquire))
        self._patch(tasks.claims.Claims, "finish", timed("claim_finish", tasks.claims.Claims.finish))
        self._patch(tasks.storage, "read_bytes", timed("read_bytes", tasks.storage.read_bytes))
        self._patch(tasks.upload, "content_id", timed("content_id", tasks.upload.content_id))
        self._patch(tasks.sending, "plan_upload", timed("plan_upload", tasks.sending.plan_upload))
        self._patch(tasks.sending, "success", timed("success", tasks.sending.success))
        self._patch(stt.client.STTClient, "transcribe_bytes", tb_w)
        self._patch(stt.client.STTClient, "__init__", timed("STTClient()", stt.client.STTClient.__init__))

    def uninstall(self) -> None:
        for owner, name, orig in reversed(self._saved):
            setattr(owner, name, orig)
        self._saved.clear()

    def reset(self) -> None:
        self.events.clear()

    def report(self, t_start: float, t_end: float, n: int, in_flight: int) -> str:
        ev = self.events
        lines = ["trace of the flow run (b), times relative to the flow call:"]
        http = sorted(ev["http"])
        by_thread = collections.defaultdict(list)
        for a, b, tid in http:
            by_thread[tid].append((a, b))
        http = [(a, b) for a, b, _ in http]
        # time-weighted number of requests in flight, from the first send to the last answer
        points = sorted([(a, 1) for a, _ in http] + [(b, -1) for _, b in http])
        hist: collections.Counter = collections.Counter()
        level, last = 0, points[0][0]
        for t, d in points:
            hist[min(level, in_flight)] += t - last
            level, last = level + d, t
        total = sum(hist.values())
        lines.append(f"  flow call -> first request sent: {http[0][0] - t_start:.2f} s; last answer -> flow returned: "
                     f"{t_end - max(b for _, b in http):.2f} s")
        lines.append("  requests in flight (client side) between the first send and the last answer, share of time:")
        for k in range(in_flight, -1, -1):
            if hist[k]:
                lines.append(f"    {k:2d} in flight: {100 * hist[k] / total:5.1f}%  ({hist[k]:.2f} s)")
        lat = sorted(b - a for a, b in http)
        lines.append(f"  request latency (client side): median {1000 * lat[len(lat) // 2]:.0f} ms, "
                     f"p90 {1000 * lat[int(len(lat) * 0.9)]:.0f} ms")
        tasks_ = sorted(ev["task"], key=lambda r: r[1])
        subs = {b: (s0, s1) for b, s0, s1 in ev["submit"]}
        if tasks_:
            lines.append("  per task (batch): submit->fn start | fn start->1st request | last answer->fn end "
                         "| fn end->next submit")
            rows = []
            for b, s, e, tid in tasks_:
                reqs = [r for r in by_thread[tid] if s <= r[0] <= e]
                first = min(a for a, _ in reqs) if reqs else s
                lastans = max(b_ for _, b_ in reqs) if reqs else e
                nxt = [s0 for bb, (s0, _) in subs.items() if s0 >= e]
                rows.append((subs.get(b, (s, s))[0], s, first, lastans, e, min(nxt) if nxt else None, b))
            for sub, s, first, lastans, e, next_submit, b in rows:
                lines.append(f"    batch {b:3d}: start {s - t_start:6.2f} s end {e - t_start:6.2f} s | "
                             f"{1000 * (s - sub):6.0f} ms | {1000 * (first - s):6.0f} ms | "
                             f"{1000 * (e - lastans):6.0f} ms | "
                             + (f"{1000 * (next_submit - e):6.0f} ms" if next_submit is not None else "     -"))
        lines.append("  synchronous steps (wall time, and CPU time of the thread running them):")
        for name in ("plan_upload", "read_bytes", "content_id", "claim", "ledger_write", "success",
                     "ledger_clear", "claim_finish", "write_part", "STTClient()"):
            xs = [b - a for a, b, _ in ev[name]]
            if xs:
                cpu = sum(c for _, _, c in ev[name])
                lines.append(f"    {name:12s}: {len(xs):5d} calls, wall total {sum(xs):6.2f} s, median "
                             f"{1000 * statistics.median(xs):6.2f} ms, max {1000 * max(xs):7.1f} ms; CPU "
                             f"{cpu:5.2f} s = {1000 * cpu / n:5.2f} ms per file")
        return "\n".join(lines)


# -- CPU profile of every thread (--profile) ----------------------------------------------------

#: Where CPU goes: inclusive thread-CPU time of these functions (they do not nest in each other,
#: except where noted).
_PROFILE_ROWS = (
    ("tasks/upload.py", "plan_upload", "plan_upload (read the file, content hash, probe), in to_thread"),
    ("tasks/identity.py", "content_id", "  of which the content hash (request key)"),
    ("tasks/audio_prep.py", "probe", "  of which PyAV probe"),
    ("tasks/claims.py", "acquire", "Claims.acquire (exclusive claim under OUT/_ledger), in to_thread"),
    ("tasks/ledger.py", "write", "Ledger.write (json + write + fsync + rename), in to_thread"),
    ("tasks/ledger.py", "clear", "Ledger.clear (end of batch)"),
    ("tasks/claims.py", "finish", "Claims.finish (claims become tombstones, end of batch)"),
    ("tasks/tables.py", "write_part", "tables.write_part (4 per batch)"),
    ("stt/client.py", "__init__", "STTClient() (one httpx.AsyncClient per batch)"),
    ("ssl.py", "create_default_context", "  of which ssl.create_default_context"),
    ("stt/client.py", "_post", "STTClient._post (httpx request + response)"),
    ("stt/client.py", "_parse", "  of which pydantic parse of the answer"),
    ("tasks/outcome.py", "success", "outcome.success (rows of one file)"),
    ("tasks/batch.py", "_send_all", "batch._send_all (the batch's event loop work, all of the above in it "
                                    "but the to_thread parts)"),
    ("tasks/discovery.py", "discover", "discovery (streaming, in the flow's thread)"),
    ("flows/transcribe_archive.py", "_transcribe", "flow body (main thread; waits excluded)"),
)


class ThreadProfiler:
    """cProfile with a per-thread CPU clock (time.thread_time) in every thread started after
    `start()` (Prefect's task worker threads, asyncio.to_thread workers) and in the calling
    thread. Deterministic, so it slows Python code down: use it for *where*, not how fast."""

    def __init__(self) -> None:
        self._cProfile = cProfile
        self.profiles: list[tuple[str, cProfile.Profile]] = []  # (thread name, its profile)
        self._lock = threading.Lock()

    def _bootstrap(self, *_):
        import sys as _sys

        _sys.setprofile(None)
        pr = self._cProfile.Profile(time.thread_time)
        with self._lock:
            self.profiles.append((threading.current_thread().name, pr))
        pr.enable()

    def start(self) -> None:
        threading.setprofile(self._bootstrap)
        self._main = self._cProfile.Profile(time.thread_time)
        self.profiles.append((threading.current_thread().name, self._main))
        self._main.enable()

    def stop(self) -> None:
        threading.setprofile(None)
        self._main.disable()

    def report(self, n: int, cpu_total: float, top: int = 25) -> str:
        st: dict = {}  # (file, line, func) -> [ncalls, self s, inclusive s]
        for _, pr in self.profiles:
            pr.create_stats()
            for k, (cc, nc, tt, ct, _callers) in pr.stats.items():
                row = st.setdefault(k, [0, 0.0, 0.0])
                row[0] += nc
                row[1] += tt
                row[2] += ct
        groups: collections.Counter[str] = collections.Counter()
        for name, pr in self.profiles:
            group = ("main thread (flow engine, flow body)" if name == "MainThread" else
                     "to_thread workers (plan_upload, claims, ledger)"
                     if name.startswith(("asyncio_", "bulkscribe-io")) else
                     "the run's request loop (tasks.request_loop: HTTP, slots)"
                     if name == "bulkscribe-requests" else
                     "Prefect task worker threads (task engine, parts, ledger settling)"
                     if name.startswith("ThreadPoolExecutor") else f"other thread: {name}")
            groups[group] += sum(tt for (_cc, _nc, tt, _ct, _c) in pr.stats.values())
        if not st:
            return "profile: nothing recorded"
        seen = sum(v[1] for v in st.values())

        def incl(file_part: str, func: str) -> float:
            return sum(v[2] for (fn, _, name), v in st.items() if name == func and fn.endswith(file_part))

        lines = [f"CPU profile of the flow process during (b) (cProfile on thread CPU time, threads started "
                 f"during the run + main thread): {seen:.2f} s profiled of {cpu_total:.2f} s process CPU "
                 f"(the profiler's own cost included in the latter)"]
        lines.append("  by thread:")
        for group_name, cpu in groups.most_common():
            lines.append(f"  {cpu:7.2f} s {1000 * cpu / n:7.2f} ms/file  {group_name}")
        lines.append(f"  {cpu_total - seen:7.2f} s {1000 * (cpu_total - seen) / n:7.2f} ms/file  not profiled: threads "
                     "started before the run (Prefect's API client, log and event workers), non-Python threads, "
                     "the profiler's own overhead")
        lines.append("  inclusive CPU of some functions:")
        for file_part, func, label in _PROFILE_ROWS:
            v = incl(file_part, func)
            lines.append(f"  {v:7.2f} s {1000 * v / n:7.2f} ms/file  {label}")
        lines.append("  top functions by self CPU:")

        def short(fn: str) -> str:
            for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
                if marker in fn:
                    return fn.split(marker, 1)[1]
            return fn

        for (fn, line, name), v in sorted(st.items(), key=lambda kv: -kv[1][1])[:top]:
            lines.append(f"  {v[1]:7.2f} s {1000 * v[1] / n:7.2f} ms/file {v[0]:8d} calls  {short(fn)}:{line}:{name}")
        return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1000, help="files in the archive (default 1000)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="Settings.concurrency: requests in flight per batch task (default 4); the "
                        "baseline keeps concurrency x parallel-batches in flight")
    p.add_argument("--parallel-batches", type=int, default=2, help="Settings.parallel_batches (default 2)")
    p.add_argument("--batch-size", type=int, default=50, help="Settings.batch_size (default 50)")
    p.add_argument("--language", default="en",
                   help="request language (default en: 'auto' makes the server run language detection, "
                        "a full encoder pass, on every request)")
    p.add_argument("--clip", choices=("tone", "speech"), default="tone",
                   help="tone: 0.6 s of the recording's room tone (default); speech: 1.0 s of speech")
    p.add_argument("--rps", type=float, default=0.0,
                   help="Settings.requests_per_second (default 0: no rate limit, the fastest setting; the "
                        "project default is 20, which caps the flow at 20 files/s whatever the server does)")
    p.add_argument("--server-workers", type=int, default=0, help="BULKSCRIBE_SERVER_WORKERS (0: server default)")
    p.add_argument("--warmup", type=int, default=24, help="untimed warm-up requests (default 24)")
    p.add_argument("--heartbeats", action="store_true",
                   help="keep Prefect's flow-run heartbeats (a run against a Prefect server has them)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile (thread CPU time) every thread of the flow process during (b); slows it down")
    p.add_argument("--trace", action="store_true",
                   help="record timestamps inside the flow run (task, request, ledger and Parquet timings)")
    p.add_argument("--rounds", type=int, default=4,
                   help="rounds of one (b) and one (a) each, in ABBA order: b a a b ... (default 4)")
    p.add_argument("--max-seconds", type=float, default=270,
                   help="skip the remaining rounds when the next one would end the run past this (default 270)")
    p.add_argument("--workdir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    args = p.parse_args(argv)

    from pydantic import SecretStr
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from config.settings import Settings
    from flows.prefect_api import temporary_prefect_api
    from flows.transcribe_archive import run_with_settings
    from stt.contract import WIZPER
    from stt.server.launcher import EmbeddedServer
    from tasks import tables

    in_flight = args.concurrency * args.parallel_batches
    started = time.perf_counter()
    phases: list[Phase] = []
    profiler = tracer = None
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=args.workdir))
    try:
        src = work / "archive"
        paths = make_files(src, args.files, args.clip)
        warm_src = work / "warm-archive"  # the flow's warm-up run, never part of the timed runs
        warm_paths = make_files(warm_src, max(2, args.concurrency), args.clip, first_index=args.files)
        size = paths[0].stat().st_size
        print(f"pipeline_overhead: {args.files} files ({args.clip}, {size} bytes each), model {WIZPER}, "
              f"language {args.language}, flow concurrency {args.concurrency} x parallel_batches "
              f"{args.parallel_batches} = {in_flight} in flight, batch_size {args.batch_size}, "
              f"rate limit {args.rps or 'off'}; baseline "
              f"{in_flight} in flight; cores {os.cpu_count()}, loadavg {os.getloadavg()[0]:.2f}")

        env = {
            "BULKSCRIBE_SERVER_MAX_QUEUE": str(max(1000, 4 * in_flight)),
            "BULKSCRIBE_SERVER_FAST_BEAM_SIZE": "1",
            "BULKSCRIBE_SERVER_VAD_FILTER": "true",
        }
        if args.server_workers:
            env["BULKSCRIBE_SERVER_WORKERS"] = str(args.server_workers)
        t0 = time.perf_counter()
        with EmbeddedServer(env=env) as srv:
            print(f"STT server start-up: {time.perf_counter() - t0:.1f} s ({', '.join(f'{k}={v}' for k, v in env.items())})")
            assert srv.pid is not None
            meter = CpuMeter(srv.pid)

            # Server warm-up: model, VAD, PyAV, sqlite, connection set-up.
            t0 = time.perf_counter()
            warm = [paths[i % len(paths)] for i in range(args.warmup)]
            asyncio.run(baseline(srv.api_url, srv.api_key, warm, WIZPER, args.language, in_flight, "warm-up"))
            print(f"server warm-up: {args.warmup} requests in {time.perf_counter() - t0:.1f} s")

            settings = Settings(api_url=srv.api_url, api_key=SecretStr(srv.api_key), model=WIZPER,
                                language=args.language, concurrency=args.concurrency,
                                batch_size=args.batch_size, parallel_batches=args.parallel_batches,
                                api_idempotency_keys=True, requests_per_second=args.rps or None)
            t0 = time.perf_counter()
            os.environ["PREFECT_HOME"] = str(work / "prefect")  # the temporary API's database
            with temporary_prefect_api() as api_url, contextlib.ExitStack() as heartbeats:
                if args.heartbeats:
                    heartbeats.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}))
                if api_url is None:
                    raise BenchError("PREFECT_API_URL is set: unset it, the bench starts its own Prefect API")
                print(f"Prefect API start-up (temporary, as bulkscribe run): {time.perf_counter() - t0:.1f} s; "
                      f"flow-run heartbeats {'on' if args.heartbeats else 'off'}")
                t0 = time.perf_counter()
                s = run_with_settings(str(warm_src), str(work / "out-warm"), settings)
                print(f"Prefect warm-up flow run: {len(warm_paths)} files in {time.perf_counter() - t0:.1f} s "
                      f"(first flow run of the process; transcribed {s.transcribed})")

                # ABBA...: b a a b b a ... so that drift in the machine's load hits both sides alike
                order = [("b", "a") if r % 2 == 0 else ("a", "b") for r in range(args.rounds)]
                flow_runs = 0
                for r, sides in enumerate(order):
                    spent = time.perf_counter() - started
                    per_round = sum(ph.wall for ph in phases) / r if r else 0.0
                    if r and spent + per_round > args.max_seconds:
                        print(f"  round {r + 1} skipped: {spent:.0f} s spent, a round takes ~{per_round:.0f} s, "
                              f"--max-seconds {args.max_seconds:.0f}")
                        break
                    for side in sides:
                        if side == "b":
                            if flow_runs:
                                # new bytes -> new content hashes -> new request keys, so the server
                                # does the work again instead of replaying its answers
                                paths = make_files(src, args.files, args.clip,
                                                   first_index=(flow_runs + 1) * (args.files + len(warm_paths)))
                            out = work / f"out-{flow_runs}"
                            first = flow_runs == 0
                            if first:
                                profiler = ThreadProfiler() if args.profile else None
                                tracer = Tracer() if args.trace else None
                            if tracer and first:
                                tracer.install()
                            c0 = meter.snapshot()
                            w0 = datetime.now(UTC)
                            if profiler and first:
                                profiler.start()
                            t0 = time.perf_counter()
                            summary = run_with_settings(str(src), str(out), settings)
                            t1 = time.perf_counter()
                            if profiler and first:
                                profiler.stop()
                            if tracer and first:
                                tracer.uninstall()
                            phases.append(Phase("b", t1 - t0, cpu_delta(c0, meter.snapshot()), (w0, datetime.now(UTC))))
                            if first:
                                t0_b, t1_b = t0, t1
                            flow_runs += 1
                            if summary.transcribed != args.files or summary.failed or summary.skipped:
                                raise BenchError(f"flow did not transcribe every file:\n{summary.render()}")
                            rows = tables.read_table(str(out), "transcripts", columns=["request_key"]).num_rows
                            if rows != args.files:
                                raise BenchError(f"transcripts table has {rows} rows, expected {args.files}")
                        else:
                            c0 = meter.snapshot()
                            w0 = datetime.now(UTC)
                            t0 = time.perf_counter()
                            ok = asyncio.run(baseline(srv.api_url, srv.api_key, paths, WIZPER, args.language,
                                                      in_flight, "(a)"))
                            phases.append(Phase("a", time.perf_counter() - t0, cpu_delta(c0, meter.snapshot()),
                                                (w0, datetime.now(UTC))))
                            assert ok == args.files
                        p_ = phases[-1]
                        print(f"  {'(b) flow    ' if side == 'b' else '(a) baseline'}: {args.files / p_.wall:6.2f} "
                              f"files/s ({p_.wall:.2f} s), loadavg {os.getloadavg()[0]:.2f}", flush=True)

            charges = server_charges(srv.api_url, srv.api_key)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.files
    print()
    print(f"{'':16} {'wall s':>7} {'files/s':>8} {'self CPU':>9} {'STT srv CPU':>11} {'Prefect API CPU':>15} "
          f"{'1st answer':>10} {'after last':>10} {'long gaps':>14} {'median':>8}")
    print(f"{'':16} {'':>7} {'':>8} {'ms/file':>9} {'ms/file':>11} {'ms/file':>15} {'after s':>10} "
          f"{'answer s':>10} {'n / excess s':>14} {'intv ms':>8}")
    count: collections.Counter[str] = collections.Counter()
    for ph in phases:
        count[ph.side] += 1
        label = f"{'(b) flow' if ph.side == 'b' else '(a) baseline'} #{count[ph.side]}"
        t = timeline(charges, *ph.window)
        gaps = f"{t['long_gaps']} / {t['long_gap_excess_s']:.2f}" if "lead_s" in t else "-"
        print(f"{label:16} {ph.wall:7.2f} {n / ph.wall:8.2f} {1000 * ph.cpu['self'] / n:9.2f} "
              f"{1000 * ph.cpu['stt'] / n:11.2f} {1000 * ph.cpu['prefect'] / n:15.2f} "
              f"{t.get('lead_s', float('nan')):10.2f} {t.get('tail_s', float('nan')):10.2f} {gaps:>14} "
              f"{t.get('median_gap_ms', float('nan')):8.1f}")
    print("  (1st answer / after last: from the start of the phase to the first answer the server recorded, "
          "and from the last one to the end of the phase; long gaps: intervals between two answers recorded "
          "by the server longer than 3x the phase's median interval, and the time they add over the median)")
    if args.trace and tracer:
        print()
        print(tracer.report(t0_b, t1_b, n, in_flight))
    if args.profile and profiler:
        print()
        print(profiler.report(n, phases[0].cpu["self"]))
    rate = {side: n * count[side] / sum(ph.wall for ph in phases if ph.side == side) for side in ("a", "b")}
    print()
    print(f"(b) flow:     {rate['b']:.2f} files/s  ({count['b']} run(s) of {n} files, total files / total time)")
    print(f"(a) baseline: {rate['a']:.2f} files/s  ({count['a']} run(s) of {n} files)")
    print(f"per round (flow / baseline, the two phases of one round back to back): {round_ratios(phases)}")
    print(f"total runtime {time.perf_counter() - started:.0f} s, loadavg now {os.getloadavg()[0]:.2f}, "
          f"goal ratio >= {RATIO_GOAL}")
    print(f"ratio={rate['b'] / rate['a']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
