"""Observability: Prometheus metrics of real calls, traces that cross the gateway into MCP
servers and HTTP services, log lines that carry trace ids, and the orchestrator endpoints."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.gateway import Gateway, fault_server, run_gateway
from tests.integration.test_mesh_registry import agent, wait_service

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"
ALL_TRACES = {"MESHGATE_TRACE_SAMPLE_RATIO": "1"}


def scrape(gw: Gateway) -> dict[str, float]:
    """Every sample of /metrics, by its series (`name{labels}` as exposed)."""
    r = gw.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def series(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        if key.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', key))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def test_metrics_count_calls_by_outcome_and_keep_labels_bounded(tmp_path: Path) -> None:
    policy = '[servers.fault]\ninstances = 2\nidempotent_tools = ["echo"]\n'
    with run_gateway(tmp_path, {"fault": fault_server()}, policy, node="m1") as gw:
        gw.wait_for("fault", lambda v: [i["state"] for i in v["instances"]] == ["healthy"] * 2)
        for _ in range(3):
            assert gw.call("fault", "echo", {"text": "x"}).status_code == 200
        assert gw.call("fault", "echo", {}).status_code == 422  # the server refuses
        assert gw.call("fault", "nope").status_code == 404  # never routed: no series
        assert gw.call("fault", "crash").status_code == 502  # not retry-safe
        gw.wait_for("fault", lambda v: [i["state"] for i in v["instances"]] == ["healthy"] * 2)
        s = scrape(gw)
        assert s['meshgate_build_info{node="m1",version="0.1.0"}'] == 1
        count = "meshgate_call_duration_seconds_count"
        assert series(s, count, service="fault", tool="echo", outcome="ok") == 3
        assert series(s, count, service="fault", tool="echo", outcome="invalid") == 1
        assert series(s, count, service="fault", tool="crash", outcome="crashed") == 1
        assert series(s, count, tool="nope") == 0
        attempts = "meshgate_attempt_duration_seconds_count"
        assert series(s, attempts, service="fault", outcome="ok") == 3
        assert series(s, attempts, service="fault", outcome="crashed") == 1
        assert series(s, "meshgate_instance_restarts_total", service="fault") >= 1
        assert series(s, "meshgate_instances", service="fault", state="healthy") == 2
        assert series(s, "meshgate_breaker_state", service="fault") == 0
        assert series(s, "meshgate_in_flight", service="fault") == 0
        assert series(s, "meshgate_registry_up", backend="embedded") == 1
        assert series(s, "meshgate_queue_up", backend="embedded") == 1
        assert series(s, "process_resident_memory_bytes") > 0
        assert not any("_created" in key for key in s)


def test_health_checks_breakers_and_tasks_are_measured(tmp_path: Path) -> None:
    policy = (
        "[servers.fault]\ncall_timeout_s = 0.2\n"
        "[servers.fault.health]\ninterval_s = 0.2\n"
        "[servers.fault.breaker]\nfailure_threshold = 2\nrecovery_s = 60\n"
    )
    with run_gateway(tmp_path, {"fault": fault_server()}, policy) as gw:
        gw.call("fault", "set_fault", {"name": "slow_ms", "value": 3000})
        for _ in range(2):
            assert gw.call("fault", "echo", {"text": "x"}).status_code == 504
        s = scrape(gw)
        assert series(s, "meshgate_breaker_state", service="fault") == 2  # open
        assert series(s, "meshgate_breaker_transitions_total", service="fault", to="open") == 1
        assert series(s, "meshgate_call_duration_seconds_count", outcome="timeout") == 2
        assert series(s, "meshgate_health_checks_total", service="fault", result="ok") >= 1
        target = {"server": "fault", "tool": "fail"}
        r = gw.http.post(f"{API}/enqueue", json={"target": target, "max_attempts": 1})
        task_id = r.json()["task_id"]
        assert gw.get(f"{API}/task/{task_id}", params={"wait_s": 30}).json()["status"] in (
            "dead",
            "failed",
        )
        s = scrape(gw)
        finished = series(s, "meshgate_task_duration_seconds_count", target="fault")
        assert finished == 1
        assert (
            series(s, "meshgate_tasks", status="dead")
            + series(s, "meshgate_tasks", status="failed")
            == 1
        )


def _trace(gw: Gateway, trace_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while (r := gw.get(f"{API}/traces/{trace_id}")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)
    found: dict[str, Any] = r.json()
    return found


def test_traces_cross_into_mcp_servers_http_services_and_tasks(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, env=ALL_TRACES) as gw:
        headers = {"traceparent": TRACEPARENT}
        meta = json.loads(gw.call("fault", "meta", headers=headers).json()["content"][0]["text"])
        assert meta["traceparent"].split("-")[1] == PARENT_TRACE  # the server is in the trace
        trace = _trace(gw, PARENT_TRACE)
        spans = {s["span_id"]: s for s in trace["spans"]}
        server = next(s for s in trace["spans"] if s["kind"] == "server")
        assert server["parent_id"] == TRACEPARENT.split("-")[2]
        assert server["name"] == "POST /api/v1/mcp/servers/{name}/tools/{tool}"
        attempt = next(s for s in trace["spans"] if s["kind"] == "client")
        assert attempt["attributes"]["meshgate.instance"] == "fault-1"
        assert meta["traceparent"].split("-")[2] == attempt["span_id"]  # sent by the attempt
        routed = spans[attempt["parent_id"]]
        assert (
            routed["name"] == "tools/call fault/meta" and routed["parent_id"] == server["span_id"]
        )

        with agent("planner", gw.url) as _:
            wait_service(gw, "planner", lambda v: v["state"] == "healthy")
            other = "5bf92f3577b34da6a3ce929d0e0e4737"
            r = gw.get(
                f"{API}/call/planner/headers",
                headers={"traceparent": f"00-{other}-00f067aa0ba902b7-01"},
            )
            assert r.json()["traceparent"].split("-")[1] == other
            assert r.json()["traceparent"].split("-")[2] in {
                s["span_id"] for s in _trace(gw, other)["spans"] if s["kind"] == "client"
            }

        third = "6bf92f3577b34da6a3ce929d0e0e4738"
        r = gw.http.post(
            f"{API}/enqueue",
            json={"target": {"server": "fault", "tool": "fail"}, "max_attempts": 1},
            headers={"traceparent": f"00-{third}-00f067aa0ba902b7-01"},
        )
        gw.get(f"{API}/task/{r.json()['task_id']}", params={"wait_s": 30})
        task_spans = [s for s in _trace(gw, third)["spans"] if s["name"] == "task fault"]
        assert task_spans and task_spans[0]["status"] == "error"  # the task joined the trace
        dead = [
            json.loads(line)
            for line in gw.process.log
            if line.startswith("{") and "is dead after" in line
        ]
        assert dead and dead[0]["trace_id"] == third  # its log line names the trace

        listed = gw.get(f"{API}/traces", params={"limit": 100}).json()
        assert listed["tracing"] is True
        assert {PARENT_TRACE, other, third} <= {t["trace_id"] for t in listed["items"]}
        assert gw.get(f"{API}/traces/{'0' * 32}").status_code == 404
        assert gw.get(f"{API}/traces", params={"limit": 0}).status_code == 422


def test_mcp_requests_are_traced_by_route_and_only_their_paths_reach_mcp(
    tmp_path: Path,
) -> None:
    """/mcp and /mcp/{name} skip the framework's routing: their spans still carry the route,
    and paths beside them (a trailing slash, a deeper path) are not taken for MCP."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = "application/json, text/event-stream"
    with run_gateway(tmp_path, {"fault": fault_server()}, env=ALL_TRACES) as gw:
        names = {}
        for n, path in enumerate(("/mcp", "/mcp/fault")):
            trace_id = f"{n + 1:032x}"
            headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "Accept": accept}
            r = gw.http.post(path, json=init, headers=headers)
            assert r.status_code == 200 and "mcp-session-id" in r.headers, r.text
            server = next(s for s in _trace(gw, trace_id)["spans"] if s["kind"] == "server")
            names[path] = server["name"]
        assert names == {"/mcp": "POST /mcp", "/mcp/fault": "POST /mcp/{name}"}
        r = gw.http.post("/mcp/fault/tools", json=init, headers={"Accept": accept})
        assert r.status_code == 404, r.text
        r = gw.http.post("/mcp/nothere", json=init, headers={"Accept": accept})
        assert r.status_code == 404 and "nothere" in r.json()["error"]["message"]
        r = gw.http.post("/mcp/", json=init, headers={"Accept": accept})
        assert r.status_code == 307 and r.headers["location"].endswith("/mcp"), r.text


def test_tracing_off_sends_and_keeps_nothing(tmp_path: Path) -> None:
    env = {"MESHGATE_TRACING": "false"}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        meta = json.loads(
            gw.call("fault", "meta", headers={"traceparent": TRACEPARENT}).json()["content"][0][
                "text"
            ]
        )
        assert "traceparent" not in meta
        assert gw.get(f"{API}/traces").json() == {"tracing": False, "items": []}
        assert gw.get(f"{API}/traces/{PARENT_TRACE}").status_code == 404


def test_liveness_and_readiness(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        assert gw.get("/livez").json() == {"status": "live"}
        r = gw.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps the spans of every export it is sent."""

    spans: list[Any] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        assert self.path == "/v1/traces"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                type(self).spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_spans_are_exported_over_otlp_when_an_endpoint_is_set(tmp_path: Path) -> None:
    _Collector.spans = []
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    env = {
        **ALL_TRACES,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    try:
        with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
            r = gw.call("fault", "echo", {"text": "x"}, headers={"traceparent": TRACEPARENT})
            assert r.status_code == 200
            deadline = time.monotonic() + 15
            while len({s.name for s in _Collector.spans}) < 3:
                assert time.monotonic() < deadline, [s.name for s in _Collector.spans]
                time.sleep(0.1)
        names = {s.name for s in _Collector.spans if s.trace_id.hex() == PARENT_TRACE}
        assert {"tools/call fault/echo", "tools/call fault-1"} <= names
        assert "POST /api/v1/mcp/servers/{name}/tools/{tool}" in names
    finally:
        collector.shutdown()
