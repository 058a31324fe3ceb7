"""Node credentials: a peer's signed request runs as the caller it asserts, marked via="node";
every way of getting the signature wrong is a 401; and the settings a cluster needs."""

from __future__ import annotations

import pytest

from meshgate.config import MeshSettings, Settings
from meshgate.errors import ConfigError, Unauthenticated
from meshgate.security import Principal
from meshgate.security.nodes import (
    NODE_HEADER,
    PRINCIPAL_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    NodeCredentials,
)

SECRET = "a-secret-of-enough-length"
CALLER = Principal("bot", frozenset({"reader"}), via="jwt", service="svc")


def at(t: float) -> NodeCredentials:
    return NodeCredentials(SECRET, "node-b", clock=lambda: t)


def test_a_signed_request_runs_as_the_asserted_caller() -> None:
    headers = at(1000.0).sign(CALLER, "/mcp/alpha")
    principal = NodeCredentials(SECRET, "node-a", clock=lambda: 1010.0).verify(
        headers, "/mcp/alpha"
    )
    assert principal.name == "bot"
    assert principal.roles == {"reader"}
    assert principal.via == "node"
    assert principal.service == "svc"
    assert principal.claims == {"node": "node-b", "caller_via": "jwt"}


@pytest.mark.parametrize(
    "change",
    [
        {SIGNATURE_HEADER: "0" * 64},
        {NODE_HEADER: "node-c"},
        {TIME_HEADER: "1001.000"},
        {PRINCIPAL_HEADER: "e30"},  # {} in base64url
    ],
)
def test_any_altered_part_breaks_the_signature(change: dict[str, str]) -> None:
    headers = {**at(1000.0).sign(CALLER, "/mcp/alpha"), **change}
    with pytest.raises(Unauthenticated, match="not valid"):
        at(1000.0).verify(headers, "/mcp/alpha")


def test_another_secret_or_path_is_refused() -> None:
    headers = NodeCredentials("another-secret-entirely", "node-b").sign(CALLER, "/mcp/alpha")
    with pytest.raises(Unauthenticated, match="not valid"):
        NodeCredentials(SECRET, "node-a").verify(headers, "/mcp/alpha")
    headers = NodeCredentials(SECRET, "node-b").sign(CALLER, "/mcp/alpha")
    with pytest.raises(Unauthenticated, match="not valid"):
        NodeCredentials(SECRET, "node-a").verify(headers, "/mcp/beta")


@pytest.mark.parametrize("skew", [-31.0, 31.0])
def test_a_signature_outside_the_window_is_refused(skew: float) -> None:
    headers = at(1000.0).sign(CALLER, "/mcp/alpha")
    with pytest.raises(Unauthenticated, match="replayed"):
        at(1000.0 + skew).verify(headers, "/mcp/alpha")
    assert at(1000.0 + skew / 2).verify(headers, "/mcp/alpha").name == "bot"


@pytest.mark.parametrize("missing", [NODE_HEADER, TIME_HEADER, PRINCIPAL_HEADER, SIGNATURE_HEADER])
def test_a_missing_header_is_refused(missing: str) -> None:
    headers = at(1000.0).sign(CALLER, "/mcp/alpha")
    del headers[missing]
    with pytest.raises(Unauthenticated, match=missing):
        at(1000.0).verify(headers, "/mcp/alpha")


def test_a_signed_principal_that_is_not_one_is_refused() -> None:
    signer = at(1000.0)
    headers = signer.sign(CALLER, "/mcp/alpha")
    # A well-signed header that does not decode: only a node with the secret could make one,
    # and it is still refused.
    bad = "%%%"
    headers[PRINCIPAL_HEADER] = bad
    headers[SIGNATURE_HEADER] = signer._mac("node-b", headers[TIME_HEADER], "/mcp/alpha", bad)
    with pytest.raises(Unauthenticated, match="not a principal"):
        signer.verify(headers, "/mcp/alpha")


def settings(**mesh: object) -> Settings:
    return Settings(mesh=MeshSettings.model_validate(mesh))


def test_advertise_url_default_and_its_errors() -> None:
    assert settings(host="10.0.0.5", port=8800).advertise_url() == "http://10.0.0.5:8800"
    assert settings(host="::1", port=1).advertise_url() == "http://[::1]:1"
    # one node alone: a wildcard address is reached on loopback
    assert settings(host="0.0.0.0", port=9).advertise_url() == "http://127.0.0.1:9"
    shared = {"registry": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match="advertise_url"):
        settings(host="0.0.0.0", **shared).advertise_url()
    given = settings(host="::", advertise_url="https://gw-1.internal:8800/", **shared)
    assert given.advertise_url() == "https://gw-1.internal:8800"


@pytest.mark.parametrize("url", ["gw:8800", "http://gw/path", "ftp://gw", "http://"])
def test_a_bad_advertise_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="advertise_url"):
        MeshSettings.model_validate({"advertise_url": url})


def test_a_short_cluster_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        MeshSettings.model_validate({"cluster_secret": "short"})
