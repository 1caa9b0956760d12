"""The embedded server as a process: it dies with whoever started it (kill -9 included), and
its key never shows in a process listing. Fake engine: no weights needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from stt.server.launcher import EmbeddedServer, allow_entry, free_port
from tests.conftest import REPO

FAKE = {"BULKSCRIBE_SERVER_ENGINE": "fake"}

_PARENT = textwrap.dedent("""
    import sys, threading, time
    from stt.server.launcher import EmbeddedServer

    box = {}
    def start():
        box["srv"] = EmbeddedServer(env={"BULKSCRIBE_SERVER_ENGINE": "fake"}).start()
    if sys.argv[1] == "thread":  # started by a thread that then ends: the server must live on
        t = threading.Thread(target=start)
        t.start()
        t.join()
    else:
        start()
    print(box["srv"].pid, box["srv"].base_url, flush=True)
    time.sleep(600)
""")


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return any(line.startswith("State:") and line.split()[1] in ("Z", "X") for line in status.splitlines())


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_kill_9_of_the_process_that_started_a_server_leaves_no_server(started_from):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, started_from], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        pid_text, base_url = parent.stdout.readline().split()  # type: ignore[union-attr]
        server_pid = int(pid_text)
        time.sleep(1.0)  # the server outlives its starting thread...
        assert httpx.get(base_url + "/health", trust_env=False, timeout=10).status_code == 200
        os.kill(parent.pid, signal.SIGKILL)  # ...but not its process
        parent.wait()
        deadline = time.monotonic() + 30
        while not gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(server_pid), f"server {server_pid} outlived the process that started it"
        with pytest.raises(httpx.TransportError):
            httpx.get(base_url + "/health", trust_env=False, timeout=5)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]


def test_the_launchers_key_is_not_in_the_servers_command_line():
    with EmbeddedServer(env=FAKE) as srv:
        assert srv.pid is not None
        cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().decode()
        assert srv.api_key not in cmdline
        r = httpx.post(srv.api_url + "/check-balance", headers={"x-api-key": srv.api_key}, trust_env=False)
        assert r.status_code == 200


def test_serve_takes_its_key_from_a_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("key-from-a-file\n")
    port = free_port()
    env = {**os.environ, **FAKE, "BULKSCRIBE_SERVER_DB_PATH": str(tmp_path / "db.sqlite3")}
    env.pop("BULKSCRIBE_SERVER_BOOTSTRAP_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "stt.server", "--port", str(port), "--api-key-file", str(key_file),
                             "--balance", "2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.post(base + "/api/check-balance", headers={"x-api-key": "key-from-a-file"},
                               trust_env=False, timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["usd_balance"] == "2.00000000"
        assert "key-from-a-file" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("args,words", [
    ([], "API key"),
    (["--api-key", "k", "--faults", "all=2"], "add up to 1"),
    (["--api-key", "k", "--url-allowlist", "not a host/"], "host"),
])
def test_serve_refuses_bad_arguments_with_a_message(args, words, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BULKSCRIBE_SERVER_BOOTSTRAP_KEY"}
    proc = subprocess.run([sys.executable, "-m", "stt.server", "--db", str(tmp_path / "db"), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


@pytest.mark.parametrize("url,entry", [("http://127.0.0.1:9000", "127.0.0.1:9000"),
                                       ("https://minio.internal", "minio.internal:443"),
                                       ("http://[::1]:5000/bucket", "[::1]:5000")])
def test_allow_entry_names_exactly_one_endpoint(url, entry):
    assert allow_entry(url) == entry
