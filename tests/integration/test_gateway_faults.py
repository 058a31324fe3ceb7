"""Faults through a real gateway: crashes, kills under load, hangs, breakers, overload."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.gateway import alive, descendants, fault_server, npx_server, run_gateway, wait_gone

pytestmark = pytest.mark.timeout(120)

FAST_HEALTH = """
[defaults.health]
interval_s = 0.2
timeout_s = 0.5
unhealthy_after = 1

[defaults.restart]
backoff_base_s = 0.05
"""


def _stats(gw: Any, server: str) -> dict[str, Any]:
    r = gw.call(server, "stats")
    assert r.status_code == 200, r.text
    stats: dict[str, Any] = json.loads(r.json()["content"][0]["text"])
    return stats


def test_killed_instance_is_replaced(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}, FAST_HEALTH) as gw:
        [before] = gw.instances("f")
        os.kill(before["pid"], signal.SIGKILL)
        assert not wait_gone({before["pid"]}, 5)
        # Once the process is gone, no view may show it healthy.
        for _ in range(20):
            for inst in gw.instances("f"):
                assert not (inst["pid"] == before["pid"] and inst["state"] == "healthy")
        view = gw.wait_for(
            "f",
            lambda v: (
                v["instances"][0]["state"] == "healthy"
                and v["instances"][0]["pid"] != before["pid"]
            ),
            timeout=10,
        )
        after = view["instances"][0]
        assert after["id"] == before["id"]
        assert after["restarts"] == 1
        assert gw.call("f", "echo", {"text": "back"}).status_code == 200


def test_kill_under_load_retries_safe_calls_and_fails_unsafe_ones(tmp_path: Path) -> None:
    policy = FAST_HEALTH + '\n[servers.f]\ninstances = 2\nstrategy = "round_robin"\n'
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        gw.wait_for("f", lambda v: all(i["state"] == "healthy" for i in v["instances"]))
        victim = gw.instances("f")[0]["pid"]
        client = httpx.Client(base_url=gw.url, timeout=30)

        def call(tool: str, args: dict[str, Any]) -> int:
            r = client.post(f"/api/v1/mcp/servers/f/tools/{tool}", json={"arguments": args})
            return r.status_code

        def all_in_flight(view: dict[str, Any]) -> bool:
            return sum(int(i["in_flight"]) for i in view["instances"]) == 16

        with ThreadPoolExecutor(16) as pool:
            # Long enough that every call is still upstream when the last one arrives.
            safe = [pool.submit(call, "sleep", {"seconds": 2.0}) for _ in range(8)]
            unsafe = [pool.submit(call, "slow_write", {"seconds": 2.0}) for _ in range(8)]
            gw.wait_for("f", all_in_flight, timeout=10)  # half of them on the victim
            os.kill(victim, signal.SIGKILL)
            safe_codes = [f.result() for f in safe]
            unsafe_codes = [f.result() for f in unsafe]
        client.close()
        assert safe_codes == [200] * 8, safe_codes
        # Unsafe calls that were on the killed instance fail with 502, the rest succeed.
        assert set(unsafe_codes) <= {200, 502}, unsafe_codes
        assert 502 in unsafe_codes and 200 in unsafe_codes, unsafe_codes
        gw.wait_for("f", lambda v: all(i["state"] == "healthy" for i in v["instances"]))


def test_crash_mid_call_of_unsafe_tool_is_502_then_recovers(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}, FAST_HEALTH) as gw:
        r = gw.call("f", "crash")
        assert r.status_code == 502
        assert r.json()["type"].endswith("/upstream-crashed")
        # The next call waits for the replacement instead of failing.
        r = gw.call("f", "echo", {"text": "after"}, timeout_s=15)
        assert r.status_code == 200, r.text


def test_timeout_is_504_and_cancels_upstream(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        r = gw.call("f", "hang", timeout_s=0.3)
        assert r.status_code == 504
        assert r.json()["type"].endswith("/upstream-timeout")
        deadline = time.monotonic() + 5
        while not _stats(gw, "f")["cancelled"]:
            assert time.monotonic() < deadline, "notifications/cancelled never arrived"
            time.sleep(0.05)


def test_client_disconnect_cancels_upstream(tmp_path: Path) -> None:
    async def give_up_once_upstream(gw: Any) -> None:
        async with httpx.AsyncClient(base_url=gw.url) as http, anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: http.post("/api/v1/mcp/servers/f/tools/hang", json={"arguments": {}})
            )
            await anyio.to_thread.run_sync(
                lambda: gw.wait_for("f", lambda v: v["instances"][0]["in_flight"] == 1)
            )
            tg.cancel_scope.cancel()  # the connection closes with the call unanswered

    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        anyio.run(give_up_once_upstream, gw)
        deadline = time.monotonic() + 5
        while not _stats(gw, "f")["cancelled"]:
            assert time.monotonic() < deadline, "the hung call was not cancelled upstream"
            time.sleep(0.05)
        gw.wait_for("f", lambda v: v["instances"][0]["in_flight"] == 0, timeout=5)


def test_breaker_opens_after_failures_and_recovers_through_half_open(tmp_path: Path) -> None:
    policy = """
[servers.f]
call_timeout_s = 0.2
[servers.f.breaker]
failure_threshold = 3
recovery_s = 2.0
half_open_successes = 1
"""
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        for _ in range(3):  # the instance misses its own deadline: its fault
            assert gw.call("f", "hang").status_code == 504
        assert gw.instances("f")[0]["breaker"] == "open"
        r = gw.call("f", "echo", {"text": "x"})
        assert r.status_code == 503
        assert r.json()["reason"] == "circuit_open"
        assert int(r.headers["retry-after"]) >= 1
        gw.wait_for("f", lambda v: v["instances"][0]["breaker"] == "half_open", timeout=10)
        assert gw.call("f", "echo", {"text": "trial"}).status_code == 200
        assert gw.instances("f")[0]["breaker"] == "closed"


def test_breaker_failure_in_half_open_reopens(tmp_path: Path) -> None:
    policy = (
        "[servers.f]\ncall_timeout_s = 0.2\n"
        "[servers.f.breaker]\nfailure_threshold = 2\nrecovery_s = 2.0\n"
    )
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        for _ in range(2):
            gw.call("f", "hang")
        gw.wait_for("f", lambda v: v["instances"][0]["breaker"] == "half_open", timeout=10)
        assert gw.call("f", "hang").status_code == 504
        assert gw.instances("f")[0]["breaker"] == "open"


def test_full_instances_and_queue_give_503_with_retry_after(tmp_path: Path) -> None:
    policy = "[servers.f]\nmax_in_flight = 1\nqueue_size = 0\n"
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        client = httpx.Client(base_url=gw.url, timeout=30)
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(
                client.post,
                "/api/v1/mcp/servers/f/tools/sleep",
                json={"arguments": {"seconds": 1.0}},
            )
            gw.wait_for("f", lambda v: v["instances"][0]["in_flight"] == 1, timeout=5)
            r = gw.call("f", "echo", {"text": "x"})
            assert r.status_code == 503
            assert r.json()["reason"] == "overloaded"
            assert "retry-after" in r.headers
            assert slow.result().status_code == 200
        client.close()


def test_waiting_calls_are_served_when_a_slot_frees(tmp_path: Path) -> None:
    policy = "[servers.f]\nmax_in_flight = 1\nqueue_size = 8\n"
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        client = httpx.Client(base_url=gw.url, timeout=30)
        with ThreadPoolExecutor(4) as pool:
            futs = [
                pool.submit(
                    client.post,
                    "/api/v1/mcp/servers/f/tools/sleep",
                    json={"arguments": {"seconds": 0.2}},
                )
                for _ in range(4)
            ]
            codes = [f.result().status_code for f in futs]
        client.close()
        assert codes == [200] * 4


def test_crash_loop_ends_failed_with_stderr(tmp_path: Path) -> None:
    policy = "[servers.f.restart]\nmax_failures = 3\nbackoff_base_s = 0.01\n"
    with run_gateway(tmp_path, {"f": fault_server("--exit-immediately", "3")}, policy) as gw:
        view = gw.wait_for("f", lambda v: v["instances"][0]["state"] == "failed", timeout=20)
        inst = view["instances"][0]
        assert inst["last_stderr"], inst
        assert "exited" in inst["last_error"]
        r = gw.call("f", "echo", {"text": "x"})
        assert r.status_code in (404, 503)


def test_exit_during_handshake_is_a_failed_start(tmp_path: Path) -> None:
    policy = "[servers.f.restart]\nmax_failures = 2\nbackoff_base_s = 0.01\n"
    with run_gateway(tmp_path, {"f": fault_server("--exit-during-handshake")}, policy) as gw:
        view = gw.wait_for("f", lambda v: v["instances"][0]["state"] == "failed", timeout=20)
        assert "startup" in view["instances"][0]["last_error"]


def test_slow_start_beyond_timeout_fails_and_within_succeeds(tmp_path: Path) -> None:
    servers = {
        "slow": fault_server("--startup-delay", "5"),
        "ok": fault_server("--startup-delay", "0.5"),
    }
    policy = """
[servers.slow]
startup_timeout_s = 0.5
[servers.slow.restart]
max_failures = 1
"""
    with run_gateway(tmp_path, servers, policy) as gw:
        assert gw.instances("ok")[0]["state"] == "healthy"
        view = gw.wait_for("slow", lambda v: v["instances"][0]["state"] == "failed")
        assert "within 0.5s" in view["instances"][0]["last_error"]


def test_unhealthy_instance_gets_no_traffic(tmp_path: Path) -> None:
    policy = FAST_HEALTH + "\n[servers.f]\ninstances = 2\n"
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        gw.wait_for("f", lambda v: all(i["state"] == "healthy" for i in v["instances"]))
        r = gw.call("f", "set_fault", {"name": "hang_health", "value": True})
        sick = int(r.json()["content"][0]["text"].split("pid=")[1])
        view = gw.wait_for("f", lambda v: any(i["state"] == "unhealthy" for i in v["instances"]))
        assert [i["pid"] for i in view["instances"] if i["state"] == "unhealthy"] == [sick]
        for _ in range(10):
            r = gw.call("f", "pid")
            assert int(r.json()["content"][0]["text"]) != sick


def test_ping_answered_with_an_error_keeps_the_instance_healthy(tmp_path: Path) -> None:
    # Some published servers have no ping handler and answer it with an error: they are alive.
    server = fault_server("--era", "handshake", "--ping-error")
    with run_gateway(tmp_path, {"f": server}, FAST_HEALTH) as gw:
        gw.wait_for("f", lambda v: v["instances"][0]["state"] == "healthy")
        end = time.monotonic() + 30
        while _stats(gw, "f")["pings"] < 3:
            assert time.monotonic() < end, "no health checks"
            time.sleep(0.05)
        (inst,) = gw.instances("f")
        assert inst["state"] == "healthy" and inst["last_health"]["ok"] is True, inst
        assert inst["era"] == "handshake"


def test_sigterm_drains_in_flight_calls(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}) as gw:
        result: list[int] = []

        def slow_call() -> None:
            result.append(gw.call("f", "sleep", {"seconds": 1.0}).status_code)

        t = threading.Thread(target=slow_call)
        t.start()
        gw.wait_for("f", lambda v: v["instances"][0]["in_flight"] == 1, timeout=5)
        gw.proc.send_signal(signal.SIGTERM)
        t.join(10)
        assert result == [200]
        assert gw.proc.wait(15) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_gateway_stop_leaves_no_process_behind(tmp_path: Path, sig: signal.Signals) -> None:
    # npx starts the server as a grandchild: the reaper must get it too.
    servers = {
        "f": fault_server(),
        "everything": npx_server("@modelcontextprotocol/server-everything"),
    }
    with run_gateway(tmp_path, servers, "[servers.f]\ninstances = 2\n") as gw:
        kids = descendants(gw.proc.pid)
        pids = {i["pid"] for s in ("f", "everything") for i in gw.instances(s)}
        assert pids <= kids and len(pids) == 3
        gw.proc.send_signal(sig)
        gw.proc.wait(20)
        survivors = wait_gone(kids, 10)
        assert not survivors, [(p, alive(p)) for p in survivors]
