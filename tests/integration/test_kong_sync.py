"""Keeping Kong at the edge in step: a gateway with `[kong]` (or `--kong-admin`) keeps the
upstreams and targets of a stand-in of Kong's Admin API (meshgate.testing.kong_admin: Kong
itself cannot run here) as its registry has them, with real HTTP services registered and
deregistered through the mesh API; a pass with nothing changed writes nothing, a target
removed by hand is put back, an Admin API answering 500 is retried until it converges."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from meshgate.testing.kong_admin import KongAdmin
from tests.gateway import Gateway, recording_service, run_gateway, serve_app

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


@contextmanager
def kong(**kw: Any) -> Iterator[tuple[KongAdmin, str]]:
    admin = KongAdmin(**kw)
    with serve_app(admin.app) as url:
        yield admin, url


def until(what: str, done: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `done` until it is true (bounded); its value."""
    end = time.monotonic() + timeout
    while not (value := done()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def sync_state(gw: Gateway) -> dict[str, Any]:
    state: dict[str, Any] = gw.get(f"{API}/health").json()["kong_sync"]
    return state


def register(gw: Gateway, name: str, url: str, id_: str, weight: int) -> None:
    body = {
        "name": name,
        "id": id_,
        "url": url,
        "weight": weight,
        "check": {"type": "tcp", "interval_s": 0.2, "unhealthy_after": 1},
    }
    r = gw.http.post(f"{API}/register", json=body)
    assert r.status_code == 201, r.text


def target(url: str) -> str:
    return url.split("//", 1)[1]


def test_upstreams_and_targets_follow_the_registry(tmp_path: Path) -> None:
    with ExitStack() as stack:
        admin, admin_url = stack.enter_context(kong(page_size=1))  # every page of targets read
        a, _ = stack.enter_context(recording_service())
        b_alive = stack.enter_context(ExitStack())
        b, _ = b_alive.enter_context(recording_service())
        policy = f'[kong]\nadmin_url = "{admin_url}"\nsync_interval_s = 0.5\n'
        gw = stack.enter_context(run_gateway(tmp_path, {}, policy))
        register(gw, "orders", a, "orders-a", 3)
        register(gw, "orders", b, "orders-b", 1)
        want = {target(a): 3, target(b): 1}
        until("both targets", lambda: admin.target_weights("meshgate-orders") == want)
        upstream = admin.upstream("meshgate-orders")
        assert upstream is not None and upstream["tags"] == ["meshgate"]
        active = upstream["healthchecks"]["active"]
        assert (active["type"], active["healthy"]["interval"]) == ("tcp", 0.2)
        assert active["unhealthy"]["tcp_failures"] == 1
        # In step: passes go on (every 0.5 s) and write nothing.
        until("in step", lambda: not sync_state(gw)["pending"])
        writes, passes = len(admin.writes()), sync_state(gw)["passes"]
        until("two more passes", lambda: sync_state(gw)["passes"] >= passes + 2)
        assert len(admin.writes()) == writes, admin.writes()[writes:]
        # A target removed by hand in Kong is put back by the next full pass.
        admin.remove_target("meshgate-orders", target(a))
        until("the target back", lambda: admin.target_weights("meshgate-orders") == want)
        # Deregistered: out of Kong.
        r = gw.http.delete(f"{API}/services/orders/instances/orders-b")
        assert r.status_code in (200, 204), r.text
        until("b gone", lambda: admin.target_weights("meshgate-orders") == {target(a): 3})
        # Unhealthy (its port closed): out of Kong too; back when healthy again is the same path.
        register(gw, "orders", b, "orders-b", 1)
        until("b back", lambda: admin.target_weights("meshgate-orders") == want)
        b_alive.close()
        until("b out", lambda: admin.target_weights("meshgate-orders") == {target(a): 3})
        state = sync_state(gw)
        assert state["last_error"] is None and state["last_success_at"] is not None
        assert state["upstreams"] == ["meshgate-orders"]
        metrics = gw.get("/metrics").text
        assert 'meshgate_kong_sync_passes_total{outcome="ok"}' in metrics
        assert 'meshgate_kong_sync_writes_total{kind="add_target"}' in metrics


def test_an_admin_api_in_trouble_is_retried_until_in_step(tmp_path: Path) -> None:
    with ExitStack() as stack:
        admin, admin_url = stack.enter_context(kong())
        admin.fail_with = 500
        a, _ = stack.enter_context(recording_service())
        # A long interval: only the retries (and registry changes) bring it in step.
        policy = f'[kong]\nadmin_url = "{admin_url}"\nsync_interval_s = 3600\nretry_cap_s = 0.5\n'
        gw = stack.enter_context(run_gateway(tmp_path, {}, policy))
        register(gw, "billing", a, "billing-a", 5)
        state = until("failures", lambda: (s := sync_state(gw))["failures_in_a_row"] >= 2 and s)
        assert state["pending"] is True and "500" in state["last_error"]
        assert admin.upstream("meshgate-billing") is None
        admin.fail_with = None
        until("in step", lambda: admin.target_weights("meshgate-billing") == {target(a): 5})
        state = until(
            "pending cleared",
            lambda: (s := sync_state(gw))["failures_in_a_row"] == 0 and not s["pending"] and s,
        )
        assert state["last_success_at"] is not None
        assert 'meshgate_kong_sync_passes_total{outcome="error"}' in gw.get("/metrics").text


def test_the_flag_and_a_token_from_the_environment(tmp_path: Path) -> None:
    with ExitStack() as stack:
        admin, admin_url = stack.enter_context(kong(token="s3cret"))
        a, _ = stack.enter_context(recording_service())
        gw = stack.enter_context(
            run_gateway(
                tmp_path,
                {},
                env={"MESHGATE_KONG_ADMIN_TOKEN": "s3cret"},
                args=["--kong-admin", admin_url],
            )
        )
        # An HTTP check under a base path: Kong's targets have no path, its check GETs both.
        body = {
            "name": "users",
            "url": a + "/v1",
            "check": {"type": "http", "path": "/status", "interval_s": 0.5, "healthy_after": 2},
        }
        assert gw.http.post(f"{API}/register", json=body).status_code == 201
        until("in step", lambda: admin.target_weights("meshgate-users") == {target(a): 1})
        upstream = admin.upstream("meshgate-users")
        assert upstream is not None
        active = upstream["healthchecks"]["active"]
        assert (active["type"], active["http_path"], active["healthy"]["successes"]) == (
            "http",
            "/v1/status",
            2,
        )
        assert "s3cret" not in gw.get(f"{API}/health").text


def test_bad_kong_settings_are_refused(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshgate.cli", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    done = serve("--kong-admin", "kong:8001")
    assert done.returncode == 2 and "--kong-admin: expected the Admin API's" in done.stderr
    (tmp_path / "p.toml").write_text('[kong]\nadmin_url = "http://k:8001"\nsync_interval_s = 0\n')
    done = serve("--policy", "p.toml")
    assert done.returncode == 2 and "kong.sync_interval_s" in done.stderr
    (tmp_path / "q.toml").write_text('[kong]\nadmin_token_header = "a b"\nnope = 1\n')
    done = serve("--policy", "q.toml")
    assert "kong.admin_token_header" in done.stderr and "kong.nope" in done.stderr
