"""Which addresses the server may fetch an `audioUrl` from (server-side request forgery guard).

An `audioUrl` makes the server open a connection on the client's behalf; without a guard
any key holder could reach the server's own loopback services, the cloud metadata endpoint
(169.254.169.254) or the private network behind it. So by default only public unicast
addresses are fetched: loopback, private, link-local, multicast, reserved, unspecified and
shared (CGNAT) addresses are refused, including when they hide inside an IPv6 address
(IPv4-mapped, 6to4, NAT64).

The check sits where the connection is made (`GuardedBackend.connect_tcp`): the host is
resolved once, every address it resolves to is checked, and the connection goes to one of
those checked addresses, so no second DNS lookup can swap the target between check and
connect (DNS rebinding), and every redirect's new connection is checked the same way.

`BULKSCRIBE_SERVER_URL_ALLOWLIST` (comma-separated) re-enables addresses: a CIDR or an IP
(`127.0.0.0/8`, `10.1.2.3`, `::1`), a host name (`minio.internal`), either with a port
(`127.0.0.1:9000`, `[::1]:9000`, `minio.internal:9000`) to allow that port only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import anyio
import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class UrlRefused(httpcore.ConnectError):
    """The URL's host resolves to an address the policy refuses; no connection was made."""


def refusal_reason(ip: IPAddress) -> str | None:
    """Why the server must not connect to `ip` unless allowed, or None for a public address."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return refusal_reason(embedded)
    for reason, hit in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                        ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                        ("reserved", ip.is_reserved), ("private", ip.is_private),
                        ("shared address space", ip in _SHARED), ("local NAT64", ip in _NAT64_LOCAL)):
        if hit:
            return reason
    return None if ip.is_global else "not globally routable"


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AllowEntry:
    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        text = text.strip()
        try:
            return cls(network=ipaddress.ip_network(text, strict=False))
        except ValueError:
            pass
        host, port = _split_port(text)
        try:
            return cls(network=ipaddress.ip_network(host, strict=False), port=port)
        except ValueError:
            if not host or any(c in host for c in "/[]@ "):
                raise ValueError(f"not a host, IP, CIDR or host:port: {text!r}") from None
            return cls(host=host.lower().rstrip("."), port=port)

    def matches(self, host: str, port: int, ip: IPAddress) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip in self.network
        return self.host == host.lower().rstrip(".")


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [v6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"unclosed [ in {text!r}")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, None


class UrlPolicy:
    """Public addresses always; others only when an allow-list entry matches."""

    def __init__(self, allow: Iterable[AllowEntry] = ()) -> None:
        self.allow = tuple(allow)

    @classmethod
    def parse(cls, allowlist: str | None) -> UrlPolicy:
        return cls(AllowEntry.parse(x) for x in (allowlist or "").split(",") if x.strip())

    def refusal(self, host: str, port: int, ip: IPAddress) -> str | None:
        reason = refusal_reason(ip)
        if reason is None or any(e.matches(host, port, ip) for e in self.allow):
            return None
        return reason


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (a literal IP resolves to itself, in any spelling)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen[ipaddress.ip_address(str(sockaddr[0]).split("%")[0])] = None
    return list(seen)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the policy applied to every TCP connection."""

    def __init__(self, policy: UrlPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve the host ({type(exc).__name__})") from None
        check_addresses(self.policy, host, port, addresses)
        error: Exception = httpcore.ConnectError("no address")
        for ip in addresses:  # the checked addresses, never the name again
            try:
                return await self.inner.connect_tcp(str(ip), port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise UrlRefused("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def check_addresses(policy: UrlPolicy, host: str, port: int, addresses: Sequence[IPAddress]) -> None:
    """Raise UrlRefused unless every address is allowed (one bad record refuses the host)."""
    if not addresses:
        raise UrlRefused("the host resolves to no address")
    for ip in addresses:
        reason = policy.refusal(host, port, ip)
        if reason is not None:
            raise UrlRefused(f"{host} resolves to a {reason} address")
