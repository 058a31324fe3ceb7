"""`GET /api/v1/mesh/v2/stats` on a real gateway: calls through every entry (REST, /mcp, the
HTTP proxy, a task) counted under their service, failures by the metrics' outcomes, bad
windows refused as problems, and the same protection as `/topology`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.testing.gateway import create_key
from tests.gateway import Gateway, fault_server, recording_service, run_gateway
from tests.integration.test_mcp_http import _stateless, _stateless_headers

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
PROBLEM = "application/problem+json"


def wait_healthy(gw: Gateway, name: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while gw.get(f"{API}/services/{name}").json().get("state") != "healthy":
        assert time.monotonic() < end, f"{name} did not become healthy"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with recording_service() as (url, _):
        static = "".join(
            f'[[mesh.services]]\nname = "{name}"\nurl = "{url}"\ncheck = {{ type = "tcp" }}\n'
            for name in ("svc", "idle")
        )
        with run_gateway(tmp_path_factory.mktemp("stats"), {"fault": fault_server()}, static) as g:
            yield g


def stats(gw: Gateway, **params: Any) -> dict[str, Any]:
    r = gw.get(f"{API}/stats", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_calls_of_every_entry_are_counted_with_their_failures(gw: Gateway) -> None:
    ok = fails = invalid = 0
    for _ in range(4):
        assert gw.call("fault", "echo", {"text": "x"}).status_code == 200
        ok += 1
    for _ in range(3):
        assert gw.call("fault", "fail").status_code == 502  # the server answered an error
        fails += 1
    assert gw.call("fault", "echo", {}).status_code == 422  # the caller's mistake: no error
    invalid += 1
    r = gw.http.post(
        "/mcp",
        headers=_stateless_headers("tools/call", "fault__echo"),
        json=_stateless("tools/call", {"name": "fault__echo", "arguments": {"text": "y"}}),
    )
    assert r.status_code == 200 and "result" in r.json(), r.text
    ok += 1
    task = {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "z"}}}
    r = gw.http.post(f"{API}/enqueue", json=task)
    assert r.status_code == 202, r.text
    done = gw.get(f"{API}/task/{r.json()['task_id']}", params={"wait_s": 30}).json()
    assert done["status"] == "succeeded", done
    ok += 1
    wait_healthy(gw, "svc")
    assert gw.get(f"{API}/call/svc/anything").status_code == 200

    body = stats(gw, window_s=60)
    assert (body["window_s"], body["bucket_s"]) == (60, 10)
    assert abs(body["now"] - time.time()) < 60
    fault = body["services"]["fault"]
    n = ok + fails + invalid
    assert (fault["calls"], fault["errors"]) == (n, fails), fault
    assert fault["error_rate"] == round(fails / n, 4)
    assert fault["p95_ms"] is not None and fault["p50_ms"] is not None
    assert 0 < fault["p50_ms"] <= fault["p95_ms"]
    assert fault["calls_per_s"] > 0
    series = fault["series"]
    assert len(series) == 6
    assert [b["t"] for b in series] == [series[0]["t"] + 10 * i for i in range(6)]
    assert series[-1]["t"] <= body["now"] < series[-1]["t"] + 10
    assert sum(b["calls"] for b in series) == n and sum(b["errors"] for b in series) == fails
    assert all((b["p95_ms"] is None) == (b["calls"] == 0) for b in series)
    assert body["services"]["svc"]["calls"] == 1
    idle = body["services"]["idle"]  # registered, never called: listed with zeros
    assert (idle["calls"], idle["errors"], idle["error_rate"], idle["p95_ms"]) == (0, 0, 0.0, None)
    assert [b["calls"] for b in idle["series"]] == [0] * 6
    # The whole window by default.
    full = stats(gw)
    assert full["window_s"] == 300 and len(full["services"]["fault"]["series"]) == 30
    assert full["services"]["fault"]["calls"] == n


def test_a_window_s_out_of_range_or_not_a_number_is_a_problem(gw: Gateway) -> None:
    for bad in ("5", "301", "0", "-10"):
        r = gw.get(f"{API}/stats", params={"window_s": bad})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith(PROBLEM)
        problem = r.json()
        assert problem["detail"] == "window_s must be between 10 and 300", problem
        assert (problem["minimum"], problem["maximum"]) == (10, 300)
    r = gw.get(f"{API}/stats", params={"window_s": "five"})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["errors"][0]["loc"] == ["query", "window_s"]
    # Inside the range but not a whole number of buckets: rounded up.
    assert stats(gw, window_s=15)["window_s"] == 20
    assert len(stats(gw, window_s=15)["services"]["fault"]["series"]) == 2


POLICY = """
[auth]

[roles.reader]
allow = ["mesh:discover"]

[roles.caller]
allow = ["mcp:fault"]
"""


def test_stats_asks_what_topology_asks(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, POLICY) as g:
        data = tmp_path / "data"
        reader = {"authorization": f"Bearer {create_key(data, 'dash', '--role', 'reader')}"}
        caller = {"authorization": f"Bearer {create_key(data, 'bot', '--role', 'caller')}"}
        for path in ("/topology", "/stats"):
            r = g.get(f"{API}{path}")
            assert r.status_code == 401, r.text
            assert r.json()["type"].endswith("/unauthenticated")
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert g.get(f"{API}{path}", headers=caller).status_code == 403, path
            assert g.get(f"{API}{path}", headers=reader).status_code == 200, path
        assert g.call("fault", "echo", {"text": "x"}, headers=caller).status_code == 200
        body = g.get(f"{API}/stats", headers=reader).json()
        assert body["services"]["fault"]["calls"] == 1
