"""The server-side request forgery guard on `audioUrl`.

Addresses outside loopback are only ever classified here, never connected to (this
machine forbids traffic to them, and a guard must refuse them before any connection):
end to end, only names and spellings that resolve to loopback are fetched.
"""

from __future__ import annotations

import ipaddress

import httpcore
import pytest

from stt.server.download import UNREACHABLE
from stt.server.launcher import free_port
from stt.server.url_guard import AllowEntry, GuardedBackend, UrlPolicy, UrlRefused, check_addresses, refusal_reason
from tests.conftest import SHARED_AUDIO, audio_file
from tests.fake_server import file_server, in_process_server

TIMIT = "timit_LDC93S1.wav"


@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("100.64.0.1", "shared address space"),
    ("192.0.2.10", "private"),  # documentation range
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
    ("2002:7f00:1::1", "loopback"), ("2002:a9fe:a9fe::1", "link-local"),  # 6to4
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a00:1", "private"),  # NAT64
    ("64:ff9b:1::1", None),  # local-use NAT64: refused (Python versions name it differently)
])
def test_non_public_addresses_are_refused(address, reason):
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and found == (reason or found)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(address):
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_one_bad_address_refuses_the_whole_host():
    """A name with a public and a private record (DNS rebinding) is refused outright."""
    mixed = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")]
    with pytest.raises(UrlRefused, match="private"):
        check_addresses(UrlPolicy(), "example.test", 80, mixed)
    check_addresses(UrlPolicy(), "example.test", 80, mixed[:1])  # the public one alone is fine


@pytest.mark.parametrize("entry,host,port,address,allowed", [
    ("127.0.0.0/8", "localhost", 9000, "127.0.0.1", True),
    ("127.0.0.0/8", "localhost", 9000, "::1", False),
    ("10.1.2.3", "minio", 443, "10.1.2.3", True),
    ("10.1.2.3", "minio", 443, "10.1.2.4", False),
    ("127.0.0.1:9000", "127.0.0.1", 9000, "127.0.0.1", True),
    ("127.0.0.1:9000", "127.0.0.1", 9001, "127.0.0.1", False),
    ("[::1]:9000", "::1", 9000, "::1", True),
    ("minio.internal", "MinIO.internal.", 80, "10.9.9.9", True),
    ("minio.internal:9000", "minio.internal", 80, "10.9.9.9", False),
    ("fd00::/8", "x", 80, "fd00::1", True),
])
def test_allowlist_entries(entry, host, port, address, allowed):
    policy = UrlPolicy([AllowEntry.parse(entry)])
    assert (policy.refusal(host, port, ipaddress.ip_address(address)) is None) is allowed


@pytest.mark.parametrize("bad", ["a/b/c", "[::1", "host:port", "user@host"])
def test_bad_allowlist_entries_are_refused(bad):
    with pytest.raises(ValueError):
        UrlPolicy.parse(bad)


class NoConnections(httpcore.AsyncNetworkBackend):
    """The layer under the guard: any connection attempt is a test failure."""

    attempts: list[tuple[str, int]] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001
        self.attempts.append((host, port))
        raise AssertionError(f"the guard let a connection to {host}:{port} through")


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["169.254.169.254", "10.0.0.1", "192.168.0.1", "[fd00::1]", "0.0.0.0",
                                  "100.64.0.1", "224.0.0.1"])
async def test_non_loopback_targets_are_refused_before_any_connection(host):
    guarded = GuardedBackend(UrlPolicy(), inner=NoConnections())
    with pytest.raises(UrlRefused):
        await guarded.connect_tcp(host.strip("[]"), 80)
    assert NoConnections.attempts == []


# -- end to end: loopback only ----------------------------------------------------------------


@pytest.fixture
def folder():
    return SHARED_AUDIO if SHARED_AUDIO.is_dir() else audio_file(TIMIT).parent


def spellings(url: str) -> list[str]:
    """The same loopback server in spellings a naive check would miss."""
    port = url.rsplit(":", 1)[1]
    return [f"http://{h}:{port}/{TIMIT}" for h in
            ("127.0.0.1", "localhost", "LocalHost", "127.1", "0x7f.1", "2130706433", "[::ffff:127.0.0.1]")]


@pytest.mark.anyio
async def test_loopback_urls_in_any_spelling_are_refused_by_default(tmp_path, files_url):
    async with in_process_server(tmp_path) as api:
        for url in [*spellings(files_url), f"http://[::1]:{files_url.rsplit(':', 1)[1]}/{TIMIT}"]:
            r = await api.post("/transcribe", json={"audioUrl": url, "model": "Wizper"})
            assert r.status_code == 400, (url, r.text)
            assert r.json()["message"] == UNREACHABLE
        assert await api.charges() == []


@pytest.mark.anyio
async def test_the_allowlist_lets_loopback_through(tmp_path, files_url, folder):
    async with in_process_server(tmp_path, url_allowlist="127.0.0.0/8, ::1") as api:
        for url in spellings(files_url)[:-1]:  # the IPv4-mapped form is an IPv6 address: not in 127.0.0.0/8
            r = await api.post("/transcribe", json={"audioUrl": url, "model": "Wizper"})
            assert r.status_code == 200, (url, r.text)
        with file_server(folder, host="::1") as v6:
            r = await api.post("/transcribe", json={"audioUrl": f"{v6}/{TIMIT}", "model": "Wizper"})
            assert r.status_code == 200, r.text


@pytest.mark.anyio
async def test_redirects_are_checked_again_and_limited(tmp_path, files_url, folder):
    port = files_url.rsplit(":", 1)[1]
    with file_server(folder) as other:
        to_other = f"{files_url}/redirect?to={other}/{TIMIT}"
        # Only the first server is allowed: its redirect to another loopback port is refused.
        async with in_process_server(tmp_path, url_allowlist=f"127.0.0.1:{port}") as api:
            r = await api.post("/transcribe", json={"audioUrl": to_other, "model": "Wizper"})
            assert r.status_code == 400 and r.json()["message"] == UNREACHABLE, r.text
            ok = await api.post("/transcribe", json={"audioUrl": f"{files_url}/redirect?to=/{TIMIT}"})
            assert ok.status_code == 200, ok.text  # a redirect within the allowed server is followed
            loop = await api.post("/transcribe", json={"audioUrl": f"{files_url}/loop"})
            assert loop.status_code == 400 and loop.json()["message"] == UNREACHABLE
        async with in_process_server(tmp_path / "all", url_allowlist="127.0.0.0/8") as api:
            r = await api.post("/transcribe", json={"audioUrl": to_other, "model": "Wizper"})
            assert r.status_code == 200, r.text


@pytest.mark.anyio
async def test_upstream_status_and_connect_errors_are_not_echoed(tmp_path, files_url):
    async with in_process_server(tmp_path, url_allowlist="127.0.0.0/8") as api:
        answers = [await api.post("/transcribe", json={"audioUrl": url}) for url in
                   (f"{files_url}/no-such-file.wav", f"http://127.0.0.1:{free_port()}/closed-port.wav")]
    for r in answers:
        assert r.status_code == 400 and r.json() == {"error": 400, "message": UNREACHABLE}


@pytest.mark.anyio
async def test_only_http_urls_are_fetched(tmp_path):
    async with in_process_server(tmp_path, url_allowlist="127.0.0.0/8") as api:
        for url in ("file:///etc/passwd", "ftp://127.0.0.1/a.wav", "gopher://127.0.0.1/", "http://", "/relative"):
            r = await api.post("/transcribe", json={"audioUrl": url})
            assert r.status_code == 400 and "http(s)" in r.json()["message"], (url, r.text)
