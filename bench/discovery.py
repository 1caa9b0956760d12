"""Benchmark tasks.discovery.discover against fsspec's own ``find``.

The point is to show that streaming (per-page S3 listing, scandir walking)
costs no wall time against the non-streaming baseline and keeps memory flat.
Both are measured in the same run on the same data, best of N, so machine
noise affects both sides alike.

    python bench/discovery.py            # 10,000 S3 objects, 100,000 local files

Last line is ``ratio=<worst discover/find time ratio>`` for CI to grep.

The S3 side runs against moto's ThreadedMotoServer, started by this script in
a child process. moto spends roughly as much CPU per 1,000-key ListObjectsV2
page as botocore spends parsing it, so S3 timings are dominated by (and as
noisy as) moto on a busy machine; they say nothing about real S3 latency.
Needs moto[server] and boto3 (the dev extra); without them it stops at once and
says so. The moto child is waited with a timeout: if it dies (a missing module, a
crash) the benchmark fails with its exit code instead of waiting forever.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import BenchError, Child, require, run_main  # noqa: E402
from tasks.discovery import discover  # noqa: E402
from tasks.storage import filesystem_for  # noqa: E402

RATIO_GOAL = 1.3
RSS_GOAL_MB = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    count = fn()
    return time.perf_counter() - t0, count


def _race(find_fn, discover_fn, repeats: int, warmup=None) -> tuple[float, float, int, int]:
    """Best of N per side, in ABBA order so load drift (other jobs on a shared
    box, page cache, CPU boost) is spread evenly over both."""
    if warmup is None:  # dentry cache, HTTP connections, imports
        find_fn(), discover_fn()
    else:
        warmup()
    best = {"find": float("inf"), "disc": float("inf")}
    count = {"find": -1, "disc": -1}
    sides = (("find", find_fn), ("disc", discover_fn))
    for rep in range(repeats):
        for name, fn in sides if rep % 2 == 0 else reversed(sides):
            t, count[name] = _timed(fn)
            best[name] = min(best[name], t)
    return best["find"], best["disc"], count["find"], count["disc"]


def _moto_process(n_objects: int, conn) -> None:
    """Runs in a child process: ThreadedMotoServer + seeding, until told to stop.

    In its own process so moto's server-side CPU (it is the bulk of an S3
    listing here) does not fight the client for one GIL, as a real S3
    endpoint would not; both sides of the comparison get the same server.
    """
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="bench")
        per_dir = 100
        keys = [f"audio/d{i // per_dir:04d}/f{i % per_dir:04d}.wav" for i in range(n_objects)]
        t0 = time.perf_counter()
        seed_s3(client, keys)
        conn.send((endpoint, time.perf_counter() - t0))
        conn.recv()  # parent says stop (or dies: EOFError)
    except EOFError:
        pass
    finally:
        server.stop()


def bench_s3(n_objects: int, repeats: int) -> dict:
    moto = Child("moto server (child process)", _moto_process, n_objects)
    try:
        endpoint, t_setup = moto.recv(timeout_s=300 + n_objects / 100)
        # Explicit options rather than env vars: the bench must not depend on, or
        # leak into, the caller's AWS configuration.
        opts = {
            "endpoint_url": endpoint,
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"region_name": "us-east-1"},
        }
        url = "s3://bench/audio"
        fs, root = filesystem_for(url, opts)

        def find_fn() -> int:
            fs.invalidate_cache()  # no help from s3fs's dircache between runs
            return len(fs.find(root))

        def discover_fn() -> int:
            return len(list(discover(url, storage_options=opts)))

        def warmup() -> None:  # connections and code paths; a full listing costs seconds
            fs.ls(root)
            next(discover(url, storage_options=opts))

        t_find, t_disc, n_find, n_disc = _race(find_fn, discover_fn, repeats, warmup)
    finally:
        moto.stop()
    return dict(case="s3 (moto)", n=n_objects, setup=t_setup, find=t_find, disc=t_disc, n_find=n_find, n_disc=n_disc)


def seed_s3(client, keys: list[str]) -> None:
    """Seed through moto's in-process backend when possible.

    Each PUT through moto's HTTP server costs ~10 ms of (GIL-bound) CPU, so
    10,000 of them would take most of the time budget; writing to the backend
    the server thread reads from is ~100x faster. Only the listings under test
    go over HTTP. Falls back to real PUTs if moto's internals move.
    """
    body = b"RIFF0000WAVEfmt "
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        backend.get_bucket("bench")
    except Exception:  # noqa: BLE001 - any moto layout change -> slow path
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.put_object(Bucket="bench", Key=k, Body=body), keys))
        return
    for key in keys:
        backend.put_object("bench", key, body)


def make_local_tree(base: Path, n_files: int, per_dir: int = 1000) -> float:
    t0 = time.perf_counter()
    payload = b"RIFF0000WAVEfmt "
    for i in range(n_files):
        if i % per_dir == 0:
            d = base / f"d{i // per_dir:04d}"
            d.mkdir()
        fd = os.open(d / f"f{i % per_dir:04d}.wav", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, payload)
        os.close(fd)
    return time.perf_counter() - t0


def bench_local(base: Path, n_files: int, repeats: int) -> dict:
    t_setup = make_local_tree(base, n_files)
    fs, root = filesystem_for(str(base))

    def find_fn() -> int:
        return len(fs.find(root))

    def discover_fn() -> int:
        return len(list(discover(str(base))))

    t_find, t_disc, n_find, n_disc = _race(find_fn, discover_fn, repeats)
    return dict(case="local", n=n_files, setup=t_setup, find=t_find, disc=t_disc, n_find=n_find, n_disc=n_disc)


_RSS_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    mode, root, trace = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    from tasks.discovery import discover
    from tasks.storage import filesystem_for
    if trace:  # after the imports: count what discovery allocates, not module code
        import tracemalloc
        tracemalloc.start()
    if mode == "stream":
        n = sum(1 for _ in discover(root))
    elif mode == "list":
        files = list(discover(root)); n = len(files)
    elif mode == "find":
        fs, p = filesystem_for(root); n = len(fs.find(p))
    else:
        n = 0
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    print(n, hwm, peak)
    """
)


def rss_child(mode: str, root: Path, trace: bool = False) -> tuple[int, float, float]:
    """(count, peak RSS MB, peak traced Python heap MB) in a fresh interpreter.

    Peak RSS is read from /proc/self/status VmHWM, not getrusage: on Linux
    ru_maxrss survives exec, so a child spawned from this (moto-laden,
    ~100 MB) process reports the parent's peak instead of its own, and
    RUSAGE_CHILDREN has the same problem.
    """
    code = _RSS_CHILD.format(repo=str(REPO))
    try:
        done = subprocess.run([sys.executable, "-c", code, mode, str(root), "1" if trace else "0"],
                              capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {mode!r} memory child took over 900 s") from None
    if done.returncode != 0:
        raise BenchError(f"the {mode!r} memory child exited with code {done.returncode}: {done.stderr.strip()[-500:]}")
    out = done.stdout.split()
    return int(out[0]), int(out[1]) / 1024, int(out[2]) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--s3-objects", type=int, default=10_000)
    ap.add_argument("--local-files", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side; best is kept")
    args = ap.parse_args()
    require("boto3", "moto", "flask")  # the S3 side: moto[server] and boto3, before any work

    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bulkscribe-bench-"))
    try:
        rows = [bench_s3(args.s3_objects, args.repeats)]
        local_root = tmp / "local"
        local_root.mkdir()
        rows.append(bench_local(local_root, args.local_files, args.repeats))

        rss = {mode: rss_child(mode, local_root) for mode in ("idle", "stream", "list", "find")}
        # tracemalloc makes the walk ~10x slower, so only the row that matters gets it.
        heap = {"stream": rss_child("stream", local_root, trace=True)[2]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'case':<10} {'files':>8} {'setup s':>8} {'find s':>8} {'discover s':>10} {'ratio':>6}  find/discover n")
    worst = 0.0
    for r in rows:
        ratio = r["disc"] / r["find"]
        worst = max(worst, ratio)
        print(
            f"{r['case']:<10} {r['n']:>8} {r['setup']:>8.2f} {r['find']:>8.3f} {r['disc']:>10.3f} {ratio:>6.2f}"
            f"  {r['n_find']}/{r['n_disc']}"
        )
    print()
    print(f"peak RSS (VmHWM) over {args.local_files} local files, fresh interpreter per row:")
    print(f"  {'':<30} {'RSS MB':>8} {'py heap MB':>11}  files")
    labels = {
        "idle": "interpreter + imports only",
        "stream": "discover, streamed (counted)",
        "list": "list(discover(...))",
        "find": "fs.find (baseline)",
    }
    for mode, label in labels.items():
        n, rss_mb, _ = rss[mode]
        h = f"{heap[mode]:11.1f}" if mode in heap else f"{'':>11}"
        print(f"  {label:<30} {rss_mb:8.1f} {h}  {n}")
    rss_stream = rss["stream"][1]
    ok = worst <= RATIO_GOAL and rss_stream < RSS_GOAL_MB
    verdict = "met" if ok else "NOT met"
    print(f"goals: ratio <= {RATIO_GOAL}, RSS < {RSS_GOAL_MB} MB -> {verdict}; total {time.perf_counter() - t_all:.1f} s")
    print(f"ratio={worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
