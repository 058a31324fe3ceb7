"""The Consul-compatible API against a real gateway, driven by Consul clients nobody here
wrote: py-consul 1.8 and python-consul 1.1 (PyPI) each register a service with a TTL check,
pass and fail it (py-consul warns it too), discover it with `health.service(name,
passing=True)`, wait in a blocking query that returns when the check changes, and deregister
it. MCP servers show as services tagged `mcp`. Every bad input gets Consul's plain-text error
with the status its clients expect."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import httpx
import pytest

from tests.gateway import Gateway, fault_server, recording_service, run_gateway

pytestmark = pytest.mark.timeout(120)


class Env:
    def __init__(self, gw: Gateway, service_port: int) -> None:
        self.gw = gw
        self.service_port = service_port
        host, _, port = gw.url.removeprefix("http://").rpartition(":")
        self.host, self.port = host, int(port)

    def client(self, **kw: Any) -> consul.Consul:
        return consul.Consul(host=self.host, port=self.port, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with (
        recording_service() as (url, _),
        run_gateway(tmp_path_factory.mktemp("consul"), {"fault": fault_server()}) as gw,
    ):
        yield Env(gw, int(url.rpartition(":")[2]))


def statuses(entries: list[dict[str, Any]]) -> list[str]:
    """The service check's status of each health entry (the node's serfHealth comes first)."""
    return [e["Checks"][1]["Status"] for e in entries]


def test_py_consul_registers_a_ttl_service_updates_discovers_blocks_and_deregisters(
    env: Env,
) -> None:
    c = env.client()
    assert c.agent.service.register(
        "web",
        service_id="web-1",
        address="127.0.0.1",
        port=env.service_port,
        tags=["v1", "blue"],
        meta={"version": "1.2"},
        weights={"Passing": 5, "Warning": 1},
        check=consul.Check.ttl("30s"),
    )
    # Consul's TTL check starts critical: nothing passes until the service says so.
    index, entries = c.health.service("web")
    assert statuses(entries) == ["critical"]
    assert c.health.service("web", passing=True)[1] == []

    assert c.agent.check.ttl_pass("service:web-1", notes="all good")
    index, entries = c.health.service("web", passing=True)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["Service"]["ID"] == "web-1"
    assert entry["Service"]["Address"] == "127.0.0.1"
    assert entry["Service"]["Port"] == env.service_port
    assert entry["Service"]["Tags"] == ["v1", "blue"]
    assert entry["Service"]["Meta"] == {"version": "1.2"}
    assert entry["Service"]["Weights"] == {"Passing": 5, "Warning": 1}
    assert entry["Checks"][1]["Output"] == "all good"
    assert entry["Checks"][1]["Type"] == "ttl"
    assert entry["Node"]["Node"] == "test" and entry["Node"]["Datacenter"] == "dc1"
    assert c.health.service("web", passing=True, tag="blue")[1] != []
    assert c.health.service("web", passing=True, tag="green")[1] == []

    # A blocking query waits for a change past its index; failing the check is one.
    result: dict[str, Any] = {}

    def blocked() -> None:
        started = time.monotonic()
        result["answer"] = c.health.service("web", index=index, wait="90s")
        result["took"] = time.monotonic() - started

    thread = threading.Thread(target=blocked)
    thread.start()
    assert c.agent.check.ttl_fail("service:web-1", notes="disk full")
    thread.join(60)
    assert not thread.is_alive(), "the blocking query did not return on the change"
    new_index, entries = result["answer"]
    assert int(new_index) > int(index)
    assert statuses(entries) == ["critical"]
    assert entries[0]["Checks"][1]["Output"] == "disk full"
    assert result["took"] < 90  # returned on the change, not at the end of its wait
    assert c.health.service("web", passing=True)[1] == []

    # Warning is neither passing nor critical, as in Consul.
    assert c.agent.check.ttl_warn("service:web-1")
    assert statuses(c.health.service("web")[1]) == ["warning"]
    assert c.health.service("web", passing=True)[1] == []

    services = c.agent.services()
    assert services["web-1"]["Service"] == "web" and services["web-1"]["Port"] == env.service_port
    assert c.catalog.services()[1]["web"] == ["blue", "v1"]
    nodes = c.catalog.service("web")[1]
    assert [n["ServiceID"] for n in nodes] == ["web-1"]
    assert c.health.checks("web")[1][0]["CheckID"] == "service:web-1"

    # Registered in meshgate's own registry: its API shows the same instance.
    view = env.gw.get("/api/v1/mesh/v2/services/web").json()
    assert [i["id"] for i in view["instances"]] == ["web-1"]

    assert c.agent.service.deregister("web-1")
    assert c.health.service("web")[1] == []
    assert "web-1" not in c.agent.services()
    assert env.gw.get("/api/v1/mesh/v2/services/web").status_code == 404


def test_a_blocking_query_without_a_change_waits_its_wait_out(env: Env) -> None:
    c = env.client()
    index, _ = c.catalog.services()
    started = time.monotonic()
    again, _ = c.catalog.services(index=index, wait="1s")
    assert time.monotonic() - started >= 1.0
    assert again == index
    # Index 0 (or none) never blocks.
    assert c.catalog.services(index=0, wait="60s")[0] == index


def test_mcp_servers_show_as_services_tagged_mcp(env: Env) -> None:
    c = env.client()
    assert c.catalog.services()[1]["fault"] == ["mcp"]
    _, entries = c.health.service("fault", passing=True)
    assert len(entries) == 1
    service = entries[0]["Service"]
    assert service["Tags"] == ["mcp"]
    assert (service["Address"], service["Port"]) == (env.host, env.port)
    assert service["Meta"]["path"] == "/mcp/fault"
    assert service["Meta"]["url"] == f"{env.gw.url}/mcp/fault"
    assert entries[0]["Checks"][1]["Type"] == "mcp"
    assert c.status.leader() == f"{env.host}:{env.port}"
    assert c.status.peers() == [f"{env.host}:{env.port}"]
    assert c.agent.self()["Config"]["Datacenter"] == "dc1"


def test_an_http_check_runs_against_the_service(env: Env) -> None:
    """A Consul HTTP check becomes meshgate's executed check of the same path."""
    c = env.client()
    check = consul.Check.http(f"http://127.0.0.1:{env.service_port}/healthz", "1s", "2s")
    assert c.agent.service.register(
        "api", service_id="api-1", address="127.0.0.1", port=env.service_port, check=check
    )
    try:
        deadline = time.monotonic() + 30
        while statuses(c.health.service("api")[1]) != ["passing"]:
            assert time.monotonic() < deadline, c.health.service("api")
            time.sleep(0.1)
        entry = c.health.service("api")[1][0]
        assert entry["Checks"][1]["Type"] == "http"
        # Not a TTL check: the client cannot set its status.
        with pytest.raises(consul.ConsulException, match="does not have associated TTL"):
            c.agent.check.ttl_pass("service:api-1")
    finally:
        c.agent.service.deregister("api-1")


def put(env: Env, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return (
        env.gw.http.put(path, json=body, **kw) if body is not None else env.gw.http.put(path, **kw)
    )


def refused(r: httpx.Response, status: int, text: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    assert text in r.text, r.text


REGISTER = "/v1/agent/service/register"


def test_bad_registrations_get_consul_errors(env: Env) -> None:
    p = env.service_port
    ok = {"Name": "bad", "Address": "127.0.0.1", "Port": p}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"Port": p}, "Missing service name"),
        ({"Name": "bad name!", "Address": "127.0.0.1", "Port": p}, "Invalid service name"),
        ({"Name": "bad", "Address": "127.0.0.1"}, "Invalid service port"),
        ({**ok, "Port": 70000}, "Invalid service port"),
        ({**ok, "Address": "169.254.169.254"}, "link-local / cloud metadata"),
        ({**ok, "Address": "a/b"}, "not a host name or an IP address"),
        ({**ok, "Port": env.port}, "this gateway's own listener"),
        ({**ok, "Name": "fault"}, "is an MCP server here"),
        ({**ok, "Meta": {"consul-x": "1"}}, "reserved prefix"),
        ({**ok, "Meta": {"k": 1}}, "Invalid service meta"),
        ({**ok, "Tags": "v1"}, "Invalid service tags"),
        ({**ok, "Weights": {"Passing": 0}}, "Invalid service weights"),
        ({**ok, "Kind": "connect-proxy"}, "does not register Connect proxies"),
        ({**ok, "Checks": [{"TTL": "5s"}, {"TTL": "5s"}]}, "one check per service instance"),
        ({**ok, "Check": {"Args": ["/bin/true"], "Interval": "5s"}}, "does not run script"),
        ({**ok, "Check": {"GRPC": "127.0.0.1:1", "Interval": "5s"}}, "does not run gRPC"),
        ({**ok, "Check": {"HTTP": f"http://127.0.0.1:{p}/h"}}, "need an Interval"),
        ({**ok, "Check": {"HTTP": "http://127.0.0.1:1/h", "Interval": "5s"}}, "own Address"),
        ({**ok, "Check": {"TCP": f"10.0.0.1:{p}", "Interval": "5s"}}, "own Address"),
        ({**ok, "Check": {"HTTP": f"ftp://127.0.0.1:{p}/", "Interval": "5s"}}, "http://"),
        ({**ok, "Check": {"TTL": "soon"}}, "Invalid check TTL"),
        ({**ok, "Check": {"TTL": "5s", "Status": "fine"}}, "Invalid check status"),
        ({**ok, "Check": {"TTL": "5s", "HTTP": "http://x/"}}, "exactly one of"),
        (
            {**ok, "Check": {"HTTP": f"http://127.0.0.1:{p}/", "Interval": "1s", "Method": "POST"}},
            "are GETs",
        ),
        ({**ok, "Check": {"TCP": f"127.0.0.1:{p}", "Interval": "2h"}}, "Invalid check: interval_s"),
        (
            {**ok, "Check": {"TCP": f"127.0.0.1:{p}", "Interval": "1s", "Timeout": "2m"}},
            "Invalid check: timeout_s",
        ),
    ]
    for body, text in cases:
        refused(put(env, REGISTER, body), 400, text)
    refused(put(env, REGISTER, content=b"{not json"), 400, "not valid JSON")
    refused(put(env, REGISTER, content=b"[1]"), 400, "must be a JSON object")
    refused(put(env, REGISTER, content=b"[" * 100 + b"]" * 100), 400, "deeper than")
    big = b'{"Name": "x", "Meta": {"a": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    refused(put(env, REGISTER, content=big), 413, "exceeds the limit")
    assert "bad" not in env.client().catalog.services()[1]


def test_bad_queries_and_unknown_ids_get_consul_errors(env: Env) -> None:
    gw = env.gw
    for index in ("abc", "-1", "²", "9" * 5000):
        refused(gw.get("/v1/catalog/services", params={"index": index}), 400, "Invalid index")
    refused(gw.get("/v1/catalog/services?index=5&wait=forever"), 400, "Invalid wait time")
    refused(gw.get("/v1/health/service/web?dc=elsewhere"), 500, "No path to datacenter")
    refused(gw.get("/v1/health/service/web?filter=Service.Port==1"), 400, "Invalid filter")
    refused(gw.get("/v1/catalog/services?node-meta=a:b"), 400, "Invalid node-meta")
    refused(put(env, "/v1/agent/service/deregister/nope"), 404, 'Unknown service ID "nope"')
    refused(put(env, "/v1/agent/service/deregister/mcp:fault"), 400, "is an MCP server")
    refused(put(env, "/v1/agent/check/pass/nope"), 404, 'Unknown check ID "nope"')
    refused(put(env, "/v1/agent/check/update/nope", {"Status": "passing"}), 404, "Unknown check")
    refused(gw.get("/v1/agent/service/nope"), 404, "unknown service ID")
    refused(gw.get("/v1/kv/some/key"), 501, "does not serve GET /v1/kv/some/key")
    refused(put(env, "/v1/session/create", {}), 501, "does not serve PUT /v1/session/create")
    refused(
        put(env, "/v1/agent/service/deregister/x", headers={"Origin": "https://evil.example"}),
        403,
        "Permission denied: origin 'https://evil.example' is not allowed",
    )
    refused(gw.get("/v1/catalog/services", headers={"Host": "evil.example"}), 421, "not served")
    c = env.client()
    assert c.agent.service.register(
        "tick",
        service_id="tick-1",
        address="127.0.0.1",
        port=env.service_port,
        check=consul.Check.ttl("30s"),
    )
    try:
        r = put(env, "/v1/agent/check/update/service:tick-1", {"Status": "fine"})
        refused(r, 400, "Invalid check status")
        r = put(env, "/v1/agent/check/update/service:tick-1", {"Status": "passing", "Output": 1})
        refused(r, 400, "Invalid check update")
        r = put(env, "/v1/agent/check/update/service:tick-1", {"status": "passing", "output": "x"})
        assert r.status_code == 200, r.text
        assert c.health.service("tick", passing=True)[1][0]["Checks"][1]["Output"] == "x"
    finally:
        c.agent.service.deregister("tick-1")


# python-consul 1.1.0 (2018), which older code still uses, is also imported as `consul`: it is
# installed apart, once, into a cache directory, and runs in a process of its own.
PYTHON_CONSUL = "python-consul==1.1.0"
LEGACY_SCRIPT = """
import json, sys, threading
import consul

assert consul.__version__ == "1.1.0", consul.__file__
host, port, service_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = consul.Consul(host=host, port=port)
out = {}
out["register"] = c.agent.service.register(
    "legacy", service_id="legacy-1", address="127.0.0.1", port=service_port, tags=["old"],
    check=consul.Check.ttl("30s"),
)
out["before"] = c.health.service("legacy", passing=True)[1]
out["pass"] = c.agent.check.ttl_pass("service:legacy-1", notes="up")
index, out["passing"] = c.health.service("legacy", passing=True)
box = {}
thread = threading.Thread(
    target=lambda: box.update(answer=c.health.service("legacy", index=index, wait="90s"))
)
thread.start()
out["fail"] = c.agent.check.ttl_fail("service:legacy-1", notes="down")
thread.join(60)
out["index"], out["blocked"] = index, box.get("answer")
out["services"] = c.catalog.services()[1]
out["deregister"] = c.agent.service.deregister("legacy-1")
out["after"] = c.health.service("legacy")[1]
print(json.dumps(out))
"""


def legacy_client_path() -> Path:
    """A directory holding python-consul 1.1.0 and its dependencies (installed once)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = cache / "meshgate-tests" / PYTHON_CONSUL.replace("==", "-")
    if (target / "consul" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(staging),
            PYTHON_CONSUL,
        ],
        check=True,
        timeout=100,
    )
    try:
        staging.rename(target)  # whole or not at all: a concurrent install may have won
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.mark.timeout(240)
def test_python_consul_1_1_registers_updates_discovers_blocks_and_deregisters(env: Env) -> None:
    path = legacy_client_path()
    run = subprocess.run(
        [sys.executable, "-c", LEGACY_SCRIPT, env.host, str(env.port), str(env.service_port)],
        env={**os.environ, "PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["register"] is True and out["pass"] is True and out["fail"] is True
    assert out["before"] == []
    assert [e["Service"]["ID"] for e in out["passing"]] == ["legacy-1"]
    assert out["passing"][0]["Checks"][1]["Output"] == "up"
    assert out["blocked"] is not None, "the blocking query did not return on the change"
    new_index, entries = out["blocked"]
    assert int(new_index) > int(out["index"])
    assert statuses(entries) == ["critical"]
    assert out["services"]["legacy"] == ["old"]
    assert out["deregister"] is True and out["after"] == []


def test_a_ttl_checks_status_holds_for_a_new_instance_only(env: Env) -> None:
    c = env.client()
    body = {
        "Name": "boot",
        "ID": "boot-1",
        "Address": "127.0.0.1",
        "Port": env.service_port,
        "Check": {"TTL": "30s", "Status": "passing"},
    }
    assert put(env, REGISTER, body).status_code == 200
    try:
        assert statuses(c.health.service("boot")[1]) == ["passing"]
        assert c.agent.check.ttl_fail("service:boot-1")
        assert put(env, REGISTER, body).status_code == 200  # the same again: nothing changes
        assert statuses(c.health.service("boot")[1]) == ["critical"]
        changed = {**body, "Tags": ["v2"]}  # a changed registration: a new instance
        assert put(env, REGISTER, changed).status_code == 200
        assert statuses(c.health.service("boot")[1]) == ["passing"]
    finally:
        c.agent.service.deregister("boot-1")
