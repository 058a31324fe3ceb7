"""API keys on a real gateway: made by `meshgate keys create` while it runs, sent as a bearer
token or X-API-Key; no key, a wrong one, a revoked one each get 401; roles decide the rest."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meshgate.testing.gateway import create_key as make_key
from tests.gateway import Gateway, fault_server, recording_service, run_gateway
from tests.integration.test_encryption_gateway import audit_lines

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"

POLICY = """
[auth]

[roles.reader]
allow = ["mcp:fault/echo", "mesh:discover"]

[roles.platform]
allow = ["mcp:fault"]
assert_caller = true
"""


@dataclass
class Keyed:
    gw: Gateway
    data: Path
    admin: str
    reader: str
    platform: str


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("auth_keys")
    with run_gateway(tmp, {"fault": fault_server()}, POLICY) as gw:
        data = tmp / "data"
        yield Keyed(
            gw,
            data,
            admin=make_key(data, "ops", "--role", "admin"),
            reader=make_key(data, "reader-bot", "--role", "reader"),
            platform=make_key(data, "platform", "--role", "platform"),
        )


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_no_credential_is_401_with_a_bare_challenge(keyed: Keyed) -> None:
    r = keyed.gw.call("fault", "echo", {"text": "x"})
    assert r.status_code == 401, r.text
    assert r.json()["type"].endswith("/unauthenticated")
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer resource_metadata=")
    assert "error=" not in challenge  # RFC 6750 3.1: no error code when none was sent
    # Nothing of the mesh is shown to a stranger.
    for path in ("/api/v1/mcp/servers", f"{API}/services", f"{API}/health", "/metrics"):
        assert keyed.gw.get(path).status_code == 401, path


def test_keys_as_bearer_or_x_api_key(keyed: Keyed) -> None:
    g = keyed.gw
    assert g.call("fault", "echo", {"text": "x"}, headers=bearer(keyed.reader)).status_code == 200
    ok = g.call("fault", "echo", {"text": "x"}, headers={"x-api-key": keyed.reader})
    assert ok.status_code == 200
    r = g.call("fault", "write", headers=bearer(keyed.reader))
    assert r.status_code == 403 and r.json()["principal"] == "reader-bot"
    assert g.call("fault", "write", headers=bearer(keyed.admin)).status_code == 200


def test_a_wrong_key_is_401_invalid_token(keyed: Keyed) -> None:
    g = keyed.gw
    forged = keyed.reader[:-4] + ("AAAA" if not keyed.reader.endswith("AAAA") else "BBBB")
    for key in (forged, "mgk_nope_nope", "mgk_"):
        r = g.call("fault", "echo", {"text": "x"}, headers=bearer(key))
        assert r.status_code == 401, (key, r.text)
        assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_a_revoked_key_stops_working(keyed: Keyed) -> None:
    g = keyed.gw
    key = make_key(keyed.data, "short-lived", "--role", "reader")
    assert g.call("fault", "echo", {"text": "x"}, headers=bearer(key)).status_code == 200
    key_id = key.split("_")[1]
    # Over REST, which needs the keys operation: a reader may not, an admin may.
    assert g.http.delete(f"{API}/keys/{key_id}", headers=bearer(keyed.reader)).status_code == 403
    r = g.http.delete(f"{API}/keys/{key_id}", headers=bearer(keyed.admin))
    assert r.status_code == 200, r.text
    r = g.call("fault", "echo", {"text": "x"}, headers=bearer(key))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_non_admins_see_no_paths(keyed: Keyed) -> None:
    g = keyed.gw
    health = g.get(f"{API}/health", headers=bearer(keyed.reader)).json()
    admin_view = g.get(f"{API}/health", headers=bearer(keyed.admin)).json()
    store = admin_view["registry"]["store"]
    assert store.startswith("/"), admin_view
    assert health["registry"]["store"] == "<path>"


def test_callers_are_who_they_authenticated_as(keyed: Keyed) -> None:
    g = keyed.gw
    claims = {"x-meshgate-caller": "someone-else"}
    g.call("fault", "echo", {"text": "x"}, headers={**bearer(keyed.reader), **claims})
    g.call("fault", "echo", {"text": "x"}, headers={**bearer(keyed.platform), **claims})
    edges = g.get(f"{API}/topology", headers=bearer(keyed.admin)).json()["edges"]
    callers = {e["from"] for e in edges if e["to"] == "fault" and e["kind"] == "observed"}
    # The reader may not assert a caller: recorded as itself; the platform role may.
    assert "reader-bot" in callers and "someone-else" in callers
    assert "platform" not in callers


def test_metadata_and_liveness_need_no_key(keyed: Keyed) -> None:
    g = keyed.gw
    assert g.get("/livez").status_code == 200
    doc = httpx.get(f"{g.url}/.well-known/oauth-protected-resource/mcp").json()
    assert doc["resource"] == f"{g.url}/mcp"


def test_security_events_are_audited(keyed: Keyed) -> None:
    g = keyed.gw
    g.call("fault", "echo", {"text": "x"}, headers=bearer("mgk_nope_nope"))
    g.call("fault", "write", headers=bearer(keyed.reader))
    g.call("fault", "echo", {"text": "audited"}, headers=bearer(keyed.reader))
    r = g.http.post(
        f"{API}/keys", json={"name": "made", "roles": ["reader"]}, headers=bearer(keyed.admin)
    )
    assert r.status_code == 201, r.text
    end = time.monotonic() + 10
    while not audit_lines(g.log, "key_created") and time.monotonic() < end:
        time.sleep(0.05)
    failed = audit_lines(g.log, "auth_failed")
    assert any("unknown API key" in e["reason"] for e in failed), failed
    assert all("mgk_nope_nope" not in json.dumps(e) for e in failed)  # no secret in the log
    denied = audit_lines(g.log, "denied")
    assert any(e["principal"] == "reader-bot" and "write" in e["action"] for e in denied)
    calls = audit_lines(g.log, "tool_call")
    assert any(e["principal"] == "reader-bot" and e["tool"] == "echo" for e in calls)
    [created] = audit_lines(g.log, "key_created")
    assert created["principal"] == "ops" and created["name"] == "made"
    metrics = g.get("/metrics", headers=bearer(keyed.admin)).text
    assert 'meshgate_audit_events_total{event="auth_failed",outcome="refused"}' in metrics


def test_someone_elses_task_is_not_found(keyed: Keyed) -> None:
    g = keyed.gw
    task = {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "mine"}}}
    # The reader may not enqueue at all (no mesh:enqueue): refused, nothing stored.
    assert g.http.post(f"{API}/enqueue", json=task, headers=bearer(keyed.reader)).status_code == 403
    r = g.http.post(f"{API}/enqueue", json=task, headers=bearer(keyed.admin))
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    for method, path in (("GET", f"/task/{task_id}"), ("DELETE", f"/task/{task_id}")):
        r = g.http.request(method, f"{API}{path}", headers=bearer(keyed.platform))
        assert r.status_code == 404, r.text
    listed = g.get(f"{API}/tasks", headers=bearer(keyed.platform)).json()["items"]
    assert task_id not in [t["id"] for t in listed]
    assert g.get(f"{API}/task/{task_id}", headers=bearer(keyed.admin)).status_code == 200


def test_the_secure_example_policy_is_valid() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    files = [str(examples / "mcp.json"), str(examples / "secure.toml")]
    out = subprocess.run(
        [sys.executable, "-m", "meshgate.cli", "check-config", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 error(s), 0 warning(s)" in out.stdout + out.stderr


def test_a_service_key_registers_its_own_name_only(keyed: Keyed) -> None:
    g = keyed.gw
    key = make_key(keyed.data, "orders-svc", "--service", "orders")
    own = {"name": "orders", "url": "http://127.0.0.1:9/", "check": {"type": "tcp"}}
    r = g.http.post(f"{API}/register", json=own, headers=bearer(key))
    assert r.status_code == 201, r.text
    instance = r.json()["id"]
    beat = f"{API}/services/orders/instances/{instance}/heartbeat"
    assert g.http.put(beat, headers=bearer(key)).status_code == 200
    other = {**own, "name": "billing"}
    r = g.http.post(f"{API}/register", json=other, headers=bearer(key))
    assert r.status_code == 403, r.text
    # Nothing else either: not a tool, not the service list.
    assert g.call("fault", "echo", {"text": "x"}, headers=bearer(key)).status_code == 403
    assert g.get(f"{API}/services", headers=bearer(key)).status_code == 403
    gone = g.http.delete(f"{API}/services/orders/instances/{instance}", headers=bearer(key))
    assert gone.status_code == 204


def test_the_gateways_credential_is_not_passed_on(tmp_path: Path) -> None:
    with recording_service() as (url, seen):
        policy = f"""
[auth]
[[mesh.services]]
name = "plain"
url = "{url}"
check = {{ type = "tcp" }}

[[mesh.services]]
name = "trusted"
url = "{url}"
check = {{ type = "tcp" }}

[services.trusted]
forward_credentials = true
"""
        with run_gateway(tmp_path, {}, policy) as gw:
            key = make_key(tmp_path / "data", "ops", "--role", "admin")
            for name in ("plain", "trusted"):
                end = time.monotonic() + 30
                while gw.get(f"{API}/services/{name}", headers=bearer(key)).json()["state"] != (
                    "healthy"
                ):
                    assert time.monotonic() < end
                    time.sleep(0.05)
                headers = {**bearer(key), "x-api-key": key, "x-other": "kept"}
                r = gw.get(f"{API}/call/{name}/x", headers=headers)
                assert r.status_code == 200, r.text
            plain, trusted = seen[-2].headers, seen[-1].headers
            assert "authorization" not in plain and "x-api-key" not in plain
            assert plain["x-other"] == "kept"
            assert trusted["authorization"] == f"Bearer {key}"
