"""Where a service may be registered: the URL policy that keeps registration from turning the
gateway into a tool for reaching what it alone can reach (cloud metadata, link-local
addresses, the gateway's own API), and the redaction of credentials in registered URLs.

A registration is checked when it is accepted (`POST /register`) and when it is loaded (static
`[[mesh.services]]`, stored registrations). A host name is resolved and every address it
resolves to must pass. The check is not repeated when a call is sent: a name that resolves
elsewhere later (DNS rebinding) is not caught.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from meshgate.errors import RegistrationRefused, Unresolved
from meshgate.urls import redact_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata"})
LINK_LOCAL = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))
BROADCAST = ipaddress.ip_address("255.255.255.255")
# Private networks (RFC 1918, shared address space, unique local): `ipaddress.is_private`
# counts documentation and reserved ranges too, which are not where services run.
PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
# A DNS name (labels of letters, digits and hyphens) or an IP literal; nothing that could
# carry userinfo, a path or a second host into the URL built from `address`.
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+")


def check_address(address: str) -> None:
    """Refuse an `address` field that is neither a host name nor an IP literal."""
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(address):
        raise RegistrationRefused(f"address {address!r} is not a host name or an IP address")


def _local(ip: IPAddress) -> bool:
    """Whether `ip` is an address of this machine: only those can be bound (no packet sent)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))
        return True
    except OSError:
        return False


@dataclass
class RegistrationPolicy:
    """The rules a registration URL must pass, from `[mesh]` and the gateway's own listener."""

    allowed: list[IPNetwork] = field(default_factory=list)
    denied: list[IPNetwork] = field(default_factory=list)
    allow_loopback: bool = True
    allow_private: bool = True
    resolve_timeout_s: float = 2.0
    listen_host: str = ""
    listen_ports: set[int] = field(default_factory=set)

    @classmethod
    def of(
        cls,
        *,
        allowed: Iterable[str] = (),
        denied: Iterable[str] = (),
        allow_loopback: bool = True,
        allow_private: bool = True,
        resolve_timeout_s: float = 2.0,
        listen_host: str = "",
        listen_port: int = 0,
    ) -> RegistrationPolicy:
        return cls(
            allowed=[ipaddress.ip_network(n, strict=False) for n in allowed],
            denied=[ipaddress.ip_network(n, strict=False) for n in denied],
            allow_loopback=allow_loopback,
            allow_private=allow_private,
            resolve_timeout_s=resolve_timeout_s,
            listen_host=listen_host,
            listen_ports={listen_port} if listen_port else set(),
        )

    def check_ip(self, ip: IPAddress, port: int, host: str) -> None:
        """Refuse one address `host` stands for; the message names the rule."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        where = host if host == str(ip) else f"{host} ({ip})"
        if ip in METADATA_ADDRESSES or any(ip in n for n in LINK_LOCAL):
            raise RegistrationRefused(f"{where} is a link-local / cloud metadata address")
        if ip.is_unspecified:
            raise RegistrationRefused(f"{where} is the unspecified address")
        if ip.is_multicast or ip == BROADCAST:
            raise RegistrationRefused(f"{where} is a multicast / broadcast address")
        if self._own(ip, port):
            raise RegistrationRefused(
                f"{where}:{port} is this gateway's own listener (a call would loop back into it)"
            )
        for net in self.denied:
            if ip.version == net.version and ip in net:
                raise RegistrationRefused(
                    f"{where} is in {net}, denied by mesh.registration_denied_networks"
                )
        if ip.is_loopback and not self.allow_loopback:
            raise RegistrationRefused(
                f"{where} is a loopback address (mesh.registration_allow_loopback = false)"
            )
        private = any(ip.version == n.version and ip in n for n in PRIVATE)
        if private and not self.allow_private:
            raise RegistrationRefused(
                f"{where} is a private address (mesh.registration_allow_private = false)"
            )
        if self.allowed and not any(ip.version == n.version and ip in n for n in self.allowed):
            raise RegistrationRefused(f"{where} is not in mesh.registration_allowed_networks")

    def _own(self, ip: IPAddress, port: int) -> bool:
        if port not in self.listen_ports:
            return False
        if ip.is_loopback:
            return True
        try:
            listen = ipaddress.ip_address(self.listen_host)
        except ValueError:
            return False
        if listen.is_unspecified:
            return _local(ip)
        return ip == listen

    async def check(self, url: str, *, own_port: int | None = None) -> None:
        """Refuse `url` unless the policy allows it and every address its host resolves to;
        `own_port`: the port the request came in on (the listener's, when it was OS-chosen)."""
        parts = _split(url)
        host = parts.hostname or ""
        port = _port(parts)
        if own_port:
            self.listen_ports.add(own_port)
        if host.rstrip(".").lower() in METADATA_NAMES:
            raise RegistrationRefused(f"{host} is a cloud metadata service name")
        for ip in await self.resolve(host, port):
            self.check_ip(ip, port, host)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` stands for (an IP literal: itself); resolved off the event
        loop, within `resolve_timeout_s`."""
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.resolve_timeout_s):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise Unresolved(f"{host} did not resolve within {self.resolve_timeout_s}s") from None
        except OSError as e:
            raise Unresolved(f"{host} does not resolve: {e.strerror or e}") from None
        # The scope id of a link-local IPv6 address (`fe80::1%eth0`) is not part of the address.
        return sorted(
            {ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos},
            key=str,
        )


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        raise RegistrationRefused(f"{redact_url(url)!r} is not a valid URL: {e}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise RegistrationRefused(
            f"scheme {parts.scheme or '(none)'!r} is not allowed: only http and https"
        )
    if not parts.hostname:
        raise RegistrationRefused("the URL names no host")
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)
