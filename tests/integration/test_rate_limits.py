"""Rate limits on the call path of a real gateway: a spent bucket answers 429 with Retry-After
and the IETF RateLimit headers on REST, a JSON-RPC error on /mcp, and is counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway import fault_server, run_gateway
from tests.integration.test_mcp_http import _stateless, _stateless_headers

pytestmark = pytest.mark.timeout(120)

POLICY = """
[[limits]]
name = "echo-burst"
match = "mcp:fault/echo"
per = "all"
rate_per_s = 0.01
burst = 3

[[limits]]
name = "enqueue"
match = "mesh:enqueue"
rate_per_s = 0.01
burst = 1
"""


def test_a_spent_bucket_answers_429_on_every_entry(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, POLICY) as gw:
        for _ in range(3):
            assert gw.call("fault", "echo", {"text": "x"}).status_code == 200
        r = gw.call("fault", "echo", {"text": "x"})
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        body = r.json()
        assert body["type"].endswith("/rate-limited") and body["limit"] == "echo-burst"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-policy"] == '"echo-burst";q=3;w=300'
        assert r.headers["ratelimit"].startswith('"echo-burst";r=0;t=')
        # Other tools are not counted by this limit.
        assert gw.call("fault", "pid").status_code == 200

        # /mcp takes from the same bucket: a JSON-RPC error naming the limit.
        msg = _stateless("tools/call", {"name": "fault__echo", "arguments": {"text": "x"}})
        answer = gw.http.post(
            "/mcp", headers=_stateless_headers("tools/call", "fault__echo"), json=msg
        ).json()
        assert answer["error"]["code"] == -32015, answer
        assert "echo-burst" in answer["error"]["message"]

        # Mesh operations too: the second enqueue within the window is refused, unstored.
        task = {"target": {"server": "fault", "tool": "pid"}}
        assert gw.http.post("/api/v1/mesh/v2/enqueue", json=task).status_code == 202
        r = gw.http.post("/api/v1/mesh/v2/enqueue", json=task)
        assert r.status_code == 429 and r.json()["limit"] == "enqueue"

        metrics = gw.get("/metrics").text
        assert 'meshgate_rate_limited_total{policy="echo-burst"} 2.0' in metrics
        assert 'meshgate_rate_limited_total{policy="enqueue"} 1.0' in metrics
