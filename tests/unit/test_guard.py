"""The Host and Origin rules of api.guard, as pure functions."""

from __future__ import annotations

import pytest

from meshgate.api.guard import LOOPBACK_HOSTS, allowed_hosts, bare_host, origin_allowed


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8080", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:9000", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("evil.example:443", "evil.example"),
        ("[::1", "::1"),
    ],
)
def test_the_host_is_read_without_port_or_brackets(header: str, host: str) -> None:
    assert bare_host(header) == host


def test_the_default_hosts_are_loopback_and_a_specific_bind_address() -> None:
    assert allowed_hosts(None, "127.0.0.1") == LOOPBACK_HOSTS
    assert allowed_hosts(None, "0.0.0.0") == LOOPBACK_HOSTS
    assert allowed_hosts(None, "::") == LOOPBACK_HOSTS
    assert allowed_hosts(None, "10.1.2.3") == LOOPBACK_HOSTS | {"10.1.2.3"}
    assert allowed_hosts(None, "Mesh.Local") == LOOPBACK_HOSTS | {"mesh.local"}


def test_configured_hosts_replace_the_default_and_star_allows_any() -> None:
    named = allowed_hosts(["Mesh.Internal", "[fd00::1]"], "127.0.0.1")
    assert named == frozenset({"mesh.internal", "fd00::1"})
    assert allowed_hosts(["mesh.internal", "*"], "127.0.0.1") is None
    assert allowed_hosts([], "127.0.0.1") == frozenset()


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, set(), True),
        ("http://localhost:5173", set(), True),
        ("http://127.0.0.1", set(), True),
        ("http://[::1]:8080", set(), True),
        ("http://evil.example", set(), False),
        ("http://localhost.evil.example", set(), False),
        ("null", set(), False),
        ("http://[bad", set(), False),
        ("https://app.example", {"https://app.example"}, True),
        ("https://app.example:8443", {"https://app.example"}, False),
        ("http://evil.example", {"*"}, True),
    ],
)
def test_the_origin_rule(origin: str | None, allowed: set[str], ok: bool) -> None:
    assert origin_allowed(origin, allowed) is ok
