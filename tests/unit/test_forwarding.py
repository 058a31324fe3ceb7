"""What the HTTP proxy sends on: checked paths, forwarding headers, the balancer's key."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import pytest
from starlette.datastructures import Headers

from meshgate.api.forwarding import (
    TrustedProxies,
    climbs,
    forward_path,
    forwarded,
    real_client,
)
from meshgate.config import ServerPolicy
from meshgate.errors import InvalidInput
from meshgate.router import hash_key

PREFIX = "/api/v1/mesh/v2/call/svc/"


def split(raw_rest: str) -> str:
    """What the route hands the handler: the raw path, and `path` as Starlette decodes it."""
    return forward_path((PREFIX + raw_rest).encode(), unquote(raw_rest))


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        ".",
        "a/..",
        "../x",
        "%2e%2e/x",
        "%2E%2e/x",
        ".%2e/x",
        "%2e./x",
        "..%2fx",
        "%2e%2e%2fx",
        "a%2f..%2fx",
        "..\\x",
        "a\\..\\x",
        "..%5cx",
        "%2e%2e%5Cx",
        "%252e%252e/x",
        "%25252e%25252e/x",
        "..;/x",
        ".;x/y",
        "%2e%2e;jsessionid=1/x",
    ],
)
def test_dot_segments_in_any_encoding_are_refused(raw: str) -> None:
    assert climbs(raw)
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        split(raw)


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("", "/"),
        ("a", "/a"),
        ("a/b/", "/a/b/"),
        ("a%2Fb", "/a%2Fb"),  # one segment, as the client wrote it
        ("a%3Fb", "/a%3Fb"),  # not a query
        ("a%20b/%C3%A9", "/a%20b/%C3%A9"),
        ("..a/b..", "/..a/b.."),
        ("...", "/..."),
        ("%2e%2ea", "/%2e%2ea"),
        ("a//b", "/a//b"),
        ("v1.2/file.tar.gz", "/v1.2/file.tar.gz"),
    ],
)
def test_other_paths_go_on_with_their_escapes(raw: str, sent: str) -> None:
    assert not climbs(raw)
    assert split(raw) == sent


def test_a_path_the_route_did_not_decode_from_the_raw_path_is_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot be split"):
        forward_path(b"/api/v1/mesh/v2/call/svc/a", "b")


def test_trusted_proxies_match_networks_and_mapped_addresses() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::1/128"])
    assert "10.1.2.3" in trusted and "::ffff:10.1.2.3" in trusted and "::1" in trusted
    assert "11.0.0.1" not in trusted and "not-an-ip" not in trusted and "" not in trusted
    assert "10.0.0.1" not in TrustedProxies()


def test_forwarding_headers_from_an_untrusted_peer_are_replaced() -> None:
    headers = Headers(
        raw=[
            (b"host", b"gw:8800"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-proto", b"https"),
            (b"forwarded", b"for=1.2.3.4"),
        ]
    )
    client, out = forwarded(headers, "192.0.2.7", "http", TrustedProxies(["10.0.0.0/8"]))
    assert client == "192.0.2.7"
    assert out == [
        ("x-forwarded-for", "192.0.2.7"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "gw:8800"),
    ]


def test_forwarding_headers_from_a_trusted_proxy_go_on() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    headers = Headers(
        raw=[
            (b"host", b"gw:8800"),
            (b"x-forwarded-for", b"6.6.6.6, 1.2.3.4"),
            (b"x-forwarded-for", b"10.0.0.9"),
            (b"x-forwarded-proto", b"https"),
            (b"forwarded", b"for=1.2.3.4"),
        ]
    )
    client, out = forwarded(headers, "10.0.0.1", "http", trusted)
    assert client == "1.2.3.4"  # the right-most address that is not a trusted proxy
    assert dict(out) == {
        "x-forwarded-for": "6.6.6.6, 1.2.3.4, 10.0.0.9, 10.0.0.1",
        "x-forwarded-proto": "https",
        "forwarded": "for=1.2.3.4",
        "x-forwarded-host": "gw:8800",
    }
    assert real_client(Headers(raw=[]), "10.0.0.1", trusted) == "10.0.0.1"
    only_proxies = Headers(raw=[(b"x-forwarded-for", b"10.0.0.5, 10.0.0.6")])
    assert real_client(only_proxies, "10.0.0.1", trusted) == "10.0.0.5"


def test_the_hash_key_follows_the_service_policy() -> None:
    @dataclass
    class Pool:
        policy: ServerPolicy

    def key(**policy: str) -> str | None:
        return hash_key(
            Pool(ServerPolicy(**policy)), session="s-1", client="1.2.3.4", arguments={"user": "u-9"}
        )

    assert key() is None  # least_connections: no key
    assert key(strategy="round_robin") is None
    assert key(strategy="consistent_hash") == "1.2.3.4"
    assert key(strategy="ip_hash") == "1.2.3.4"
    assert key(strategy="consistent_hash", hash_key="session") == "s-1"
    assert key(strategy="consistent_hash", hash_key="arg:user") == '"u-9"'
    assert key(strategy="consistent_hash", hash_key="arg:other") is None
