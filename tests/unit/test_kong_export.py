"""`meshgate export kong`: meshgate's services and servers as a Kong declarative file whose
routes go through the gateway nodes; `meshgate import kong` reads it back without an error,
and what it imports sends each route to meshgate's call path on those nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.config import collect
from meshgate.config.kong import convert
from meshgate.config.kong_export import ExportError, Node, document, export

NODES = ["http://10.0.0.1:8800", "http://10.0.0.2:8800"]


def test_a_service_per_http_service_and_mcp_server_behind_the_nodes() -> None:
    data: dict[str, Any] = yaml.safe_load(export(["orders", "users"], ["time"], NODES))
    assert data["_format_version"] == "3.0"
    (upstream,) = data["upstreams"]
    assert upstream["name"] == "meshgate"
    assert [t["target"] for t in upstream["targets"]] == ["10.0.0.1:8800", "10.0.0.2:8800"]
    active = upstream["healthchecks"]["active"]
    assert (active["type"], active["http_path"]) == ("http", "/readyz")
    assert active["healthy"]["interval"] > 0 and active["unhealthy"]["interval"] > 0
    assert 503 in active["unhealthy"]["http_statuses"]  # a draining node is taken out
    by_name = {s["name"]: s for s in data["services"]}
    assert list(by_name) == ["orders", "users", "mcp-time"]
    orders = by_name["orders"]
    assert (orders["host"], orders["path"]) == ("meshgate", "/api/v1/mesh/v2/call/orders/")
    assert orders["retries"] == 0  # meshgate retries what is safe itself
    (route,) = orders["routes"]
    assert (route["paths"], route["strip_path"]) == (["/orders"], True)
    mcp = by_name["mcp-time"]
    assert mcp["path"] == "/mcp/time"
    (route,) = mcp["routes"]
    assert route["paths"] == ["/mcp/time"] and route["response_buffering"] is False


def test_https_nodes_are_checked_over_https_and_ipv6_targets_bracketed() -> None:
    data = document(["a"], [], [Node.of("https://[::1]:9443"), Node.of("https://gw.example")])
    (upstream,) = data["upstreams"]
    assert upstream["healthchecks"]["active"]["type"] == "https"
    assert [t["target"] for t in upstream["targets"]] == ["[::1]:9443", "gw.example:443"]
    assert data["services"][0]["protocol"] == "https"


def test_the_import_reads_it_back_to_the_same_services_and_routes(tmp_path: Path) -> None:
    text = export(["orders", "users"], ["time"], NODES)
    fragment = convert(text, "exported.yml")
    # What the import notes is informative only: MCP's streamed routes, the check's path.
    assert sorted(fragment.services) == ["mcp-time", "orders", "users"]
    urls = {(i["name"], i["url"]) for i in fragment.instances}
    assert ("orders", "http://10.0.0.1:8800/api/v1/mesh/v2/call/orders") in urls
    assert ("mcp-time", "http://10.0.0.2:8800/mcp/time") in urls
    assert {(r["service"], tuple(r["paths"])) for r in fragment.routes} == {
        ("orders", ("/orders",)),
        ("users", ("/users",)),
        ("mcp-time", ("/mcp/time",)),
    }
    toml = tmp_path / "meshgate.toml"
    toml.write_text(fragment.to_toml())
    settings, problems = collect(None, toml, environ={})
    assert settings is not None, [str(p) for p in problems]
    assert [p for p in problems if p.severity == "error"] == []


@pytest.mark.parametrize(
    ("services", "nodes", "words"),
    [
        (["a"], [], "no gateway node"),
        (["a"], ["ftp://x:1"], r"not an http\(s\) URL"),
        (["a"], ["http://x:99999"], "bad port"),
        (["a"], ["http://a:1", "https://b:2"], "mix http and https"),
        (["a b"], NODES, "is not 1 to 64"),
    ],
)
def test_what_cannot_be_exported_is_refused(
    services: list[str], nodes: list[str], words: str
) -> None:
    with pytest.raises(ExportError, match=words):
        export(services, [], nodes)
