"""The edge route table: `[[routes]]` validated (meshgate's own paths never shadowed), and
matched as Kong's traditional router matches (priority points, plain hosts before wildcards,
longest prefix), with the path the service is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meshgate.api.edge import Matched, RouteTable, upstream_path
from meshgate.config import collect
from meshgate.config.routes import RESERVED_PATHS, EdgeSettings, RouteSettings
from meshgate.errors import InvalidInput


def route(service: str, **kw: Any) -> RouteSettings:
    return RouteSettings(service=service, **kw)


def services(table: RouteTable, host: str, method: str, path: str) -> str | None:
    found = table.match(host, method, path)
    return None if found is None else found.route.service


def test_the_longest_prefix_wins_among_equals() -> None:
    table = RouteTable(
        [route("root", paths=["/"]), route("a", paths=["/a"]), route("ab", paths=["/a/b"])]
    )
    assert services(table, "gw", "GET", "/a/b/c") == "ab"
    assert services(table, "gw", "GET", "/a/x") == "a"
    assert services(table, "gw", "GET", "/b") == "root"
    # A plain prefix, as Kong's: /a also takes /ab.
    assert services(table, "gw", "GET", "/ab") == "a"
    assert table.match("gw", "GET", "/a/b/c") == Matched(table.routes[2], "/a/b")


def test_hosts_and_methods_rank_before_path_length() -> None:
    table = RouteTable(
        [
            route("long", paths=["/api/v1/orders"]),
            route("host", hosts=["shop.example.com"], paths=["/"]),
            route("host-get", hosts=["shop.example.com"], paths=["/"], methods=["GET"]),
            route("wild", hosts=["*.example.com"], paths=["/api"]),
            route("post", paths=["/"], methods=["POST"]),
        ]
    )
    assert services(table, "shop.example.com", "GET", "/api/v1/orders") == "host-get"
    assert services(table, "shop.example.com:8000", "PUT", "/api/v1/orders") == "host"
    # Same points: a plain host, or no host, before a wildcard; then the longest prefix.
    assert services(table, "a.b.example.com", "DELETE", "/api/v1/orders") == "wild"
    assert services(table, "a.b.example.com", "POST", "/api/v1/orders") == "post"
    assert services(table, "other.org", "GET", "/api/v1/orders/7") == "long"
    assert services(table, "other.org", "GET", "/x") is None
    assert services(table, "example.com", "DELETE", "/api") is None  # *.x needs a label


def test_methods_filter_and_fall_back_to_a_shorter_prefix() -> None:
    table = RouteTable(
        [route("reads", paths=["/items"], methods=["get", "HEAD"]), route("all", paths=["/"])]
    )
    assert table.routes[0].methods == ("GET", "HEAD")
    assert services(table, "", "GET", "/items/1") == "reads"
    assert services(table, "", "POST", "/items/1") == "all"


def test_a_host_with_a_port_matches_that_port_only() -> None:
    table = RouteTable([route("p", hosts=["api.local:8000"]), route("any", paths=["/"])])
    assert services(table, "API.local:8000", "GET", "/") == "p"
    assert services(table, "api.local:9000", "GET", "/") == "any"
    assert services(table, "api.local", "GET", "/") == "any"


def test_the_first_declared_wins_a_tie() -> None:
    table = RouteTable([route("first", paths=["/x"]), route("second", paths=["/x"])])
    assert services(table, "", "GET", "/x/y") == "first"


def scope(raw: bytes) -> dict[str, Any]:
    from urllib.parse import unquote

    return {"raw_path": raw, "path": unquote(raw.decode())}


@pytest.mark.parametrize(
    ("prefix", "strip", "raw", "target", "taken"),
    [
        ("/svc", True, b"/svc/a/b", "/a/b", "/svc"),
        ("/svc", True, b"/svc", "/", "/svc"),
        ("/svc", True, b"/svcx", "/x", "/svc"),  # joined as segments (Kong's v0)
        ("/svc/", True, b"/svc/a", "/a", "/svc"),
        ("/svc", False, b"/svc/a", "/svc/a", ""),
        ("/", True, b"/a", "/a", ""),
        ("", True, b"/a", "/a", ""),
        ("/s~p", True, b"/s%7Ep/a%2Fb", "/a%2Fb", "/s~p"),  # escapes reach the service as sent
        ("/caf\u00e9", True, b"/caf%C3%A9/x", "/x", "/caf\u00e9"),
    ],
)
def test_the_path_sent_on(prefix: str, strip: bool, raw: bytes, target: str, taken: str) -> None:
    r = route("s", paths=[prefix] if prefix else [], strip_path=strip, methods=["GET"])
    assert upstream_path(scope(raw), Matched(r, prefix)) == (target, taken)


@pytest.mark.parametrize("raw", [b"/svc/../admin", b"/svc/%2e%2e/admin", b"/svc/..%2fadmin"])
def test_a_path_that_climbs_is_refused(raw: bytes) -> None:
    r = route("s", paths=["/svc"])
    with pytest.raises(InvalidInput):
        upstream_path(scope(raw), Matched(r, "/svc"))


@pytest.mark.parametrize("own", RESERVED_PATHS)
def test_meshgate_paths_are_never_shadowed(own: str) -> None:
    for path in (own, own + "/", own + "/x"):
        with pytest.raises(ValidationError, match="would shadow meshgate's own"):
            EdgeSettings(routes=(route("s", paths=[path]),))
    # On a port of their own, the routes may use them.
    edge = EdgeSettings(
        edge={"port": 8000, "on_main_port": False}, routes=(route("s", paths=[own]),)
    )
    assert edge.routes[0].paths == (own,)


def test_neighbours_of_meshgate_paths_are_fine() -> None:
    EdgeSettings(routes=(route("s", paths=["/", "/apis", "/mcpx", "/v2", "/healthy"]),))


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"paths": ["~/v\\d+"]}, "regular-expression paths are not supported"),
        ({"paths": ["v1"]}, "starts with '/'"),
        ({"paths": ["/a/../b"]}, "'.' or '..' segment"),
        ({"paths": ["/a?b"]}, "no query"),
        ({"hosts": ["exa mple.com"]}, "not a host name"),
        ({"hosts": ["example.*"]}, "not a host name"),
        ({"hosts": ["*.example.com:80"]}, "cannot name a port"),
        ({"methods": ["GET!"]}, "not a request method"),
        ({}, "at least one of hosts, paths or methods"),
    ],
)
def test_bad_routes_are_refused(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        route("s", **fields)


def test_the_loader_reports_route_problems_with_their_key(tmp_path: Path) -> None:
    toml = tmp_path / "meshgate.toml"
    toml.write_text(
        '[[mesh.services]]\nname = "a"\nurl = "http://127.0.0.1:9"\n\n'
        '[[routes]]\nservice = "a"\npaths = ["/metrics/x"]\n\n'
        '[[routes]]\nservice = "b"\npaths = ["/b"]\n'
    )
    settings, problems = collect(None, toml, environ={})
    assert settings is None
    assert any("would shadow meshgate's own /metrics" in p.reason for p in problems)
    toml.write_text('[[routes]]\nservice = "b"\npaths = ["/b"]\n\n[edge]\nport = 8000\nbogus = 1\n')
    settings, problems = collect(None, toml, environ={})
    assert [(p.key, p.severity) for p in problems] == [("edge.bogus", "error")]
    toml.write_text('[[routes]]\nservice = "b"\npaths = ["/b"]\n')
    settings, problems = collect(None, toml, environ={})
    assert settings is not None and settings.edge.routes[0].service == "b"
    # A service none of the file names may register at run time: a warning, not an error.
    assert [(p.key, p.severity) for p in problems] == [("routes.0.service", "warning")]


def test_routes_off_the_main_port_need_a_port() -> None:
    with pytest.raises(ValidationError, match="needs a port of its own"):
        EdgeSettings(edge={"on_main_port": False}, routes=(route("s", paths=["/"]),))
