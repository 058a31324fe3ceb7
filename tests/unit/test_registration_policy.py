"""The registration URL policy's pure checks, and the redaction of credentials in URLs."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from meshgate.errors import RegistrationRefused, Unresolved
from meshgate.services.policy import RegistrationPolicy, check_address
from meshgate.urls import redact_url


def refuse(policy: RegistrationPolicy, url: str) -> str:
    with pytest.raises(RegistrationRefused) as e:
        asyncio.run(policy.check(url))
    assert e.value.status == 422
    return e.value.detail


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/latest", "link-local / cloud metadata"),
        ("http://[fe80::1]:80", "link-local / cloud metadata"),
        ("http://[fd00:ec2::254]", "link-local / cloud metadata"),
        ("http://[::ffff:169.254.169.254]", "link-local / cloud metadata"),
        ("http://100.100.100.200", "link-local / cloud metadata"),
        ("http://METADATA.google.internal.", "cloud metadata service name"),
        ("http://0.0.0.0", "unspecified"),
        ("http://[ff02::1]", "multicast / broadcast"),
        ("http://255.255.255.255", "multicast / broadcast"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://127.0.0.1/", "scheme 'gopher'"),
        ("http://127.0.0.1:notaport", "not a valid URL"),
        ("http:///path", "names no host"),
    ],
)
def test_always_refused(url: str, rule: str) -> None:
    assert rule in refuse(RegistrationPolicy(), url)


def test_loopback_and_private_are_allowed_by_default_and_can_be_denied() -> None:
    default = RegistrationPolicy()
    for url in ("http://127.0.0.1:9", "http://[::1]:9", "https://10.0.0.1", "http://192.168.1.1"):
        asyncio.run(default.check(url))
    strict = RegistrationPolicy(allow_loopback=False, allow_private=False)
    assert "loopback" in refuse(strict, "http://127.0.0.1:9")
    assert "private" in refuse(strict, "http://10.0.0.1")
    asyncio.run(strict.check("http://192.0.2.1"))  # documentation range: neither


def test_configured_networks() -> None:
    policy = RegistrationPolicy.of(allowed=["10.0.0.0/8"], denied=["10.1.0.0/16"])
    asyncio.run(policy.check("http://10.2.0.1"))
    assert "registration_denied_networks" in refuse(policy, "http://10.1.2.3")
    assert "registration_allowed_networks" in refuse(policy, "http://127.0.0.1")
    assert "registration_allowed_networks" in refuse(policy, "http://[::1]")


def test_the_gateways_own_listener() -> None:
    policy = RegistrationPolicy.of(listen_host="127.0.0.1", listen_port=8800)
    assert "own listener" in refuse(policy, "http://127.0.0.1:8800/api")
    assert "own listener" in refuse(policy, "http://[::1]:8800")
    asyncio.run(policy.check("http://127.0.0.1:8801"))
    asyncio.run(policy.check("http://10.0.0.1:8800"))  # another host
    # The port the request came in on counts (a listener on an OS-chosen port).
    unknown = RegistrationPolicy.of(listen_host="127.0.0.1", listen_port=0)
    asyncio.run(unknown.check("http://127.0.0.1:9000"))
    with pytest.raises(RegistrationRefused):
        asyncio.run(unknown.check("http://127.0.0.1:9000", own_port=9000))
    # On every address: any address of this machine at that port.
    anywhere = RegistrationPolicy.of(listen_host="0.0.0.0", listen_port=8800)
    assert "own listener" in refuse(anywhere, "http://127.0.0.1:8800")
    anywhere.check_ip(ipaddress.ip_address("192.0.2.1"), 8800, "192.0.2.1")  # not local
    # The default port of the scheme is the port compared.
    on_80 = RegistrationPolicy.of(listen_host="127.0.0.1", listen_port=80)
    assert "own listener" in refuse(on_80, "http://127.0.0.1")
    asyncio.run(on_80.check("https://127.0.0.1"))


def test_names_are_resolved_and_every_address_checked() -> None:
    policy = RegistrationPolicy(allow_loopback=False)
    assert "localhost (127.0.0.1) is a loopback address" in refuse(policy, "http://localhost:9")
    with pytest.raises(Unresolved):
        asyncio.run(policy.check("http://no-such-host.invalid"))


def test_address_field() -> None:
    for ok in ("agent-1.internal", "10.0.0.1", "::1", "localhost", "svc.ns.svc.cluster.local."):
        check_address(ok)
    for bad in ("a@b", "a/b", "a b", "", "x:y@h", "-bad", "a..b"):
        with pytest.raises(RegistrationRefused):
            check_address(bad)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pass@host:80/p?q=1", "http://user:***@host:80/p?q=1"),
        ("http://token@host", "http://token@host"),
        ("http://u:p:q@[::1]:9", "http://u:***@[::1]:9"),
        ("https://host/a@b", "https://host/a@b"),
        ("http://host", "http://host"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
