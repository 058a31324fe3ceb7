"""The task queue: every accepted task runs to a final state, through the router, durably.

The behaviour tests run against both backends (`embedded` SQLite, and Redis Streams on a real
redis-server); the tests at the end are what only a shared backend does: a second node takes
over a dead node's tasks, a cancel reaches the node running the task, Redis goes away.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshgate.testing.redis_server import RedisServer
from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def enqueue(gw: Gateway, body: dict[str, Any]) -> str:
    r = gw.http.post(f"{API}/enqueue", json=body)
    assert r.status_code == 202, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def wait(gw: Gateway, task_id: str, timeout: float = 30) -> dict[str, Any]:
    r = gw.get(f"{API}/task/{task_id}", params={"wait_s": timeout})
    assert r.status_code == 200, r.text
    task: dict[str, Any] = r.json()
    return task


def stats(gw: Gateway) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(gw.call("fault", "stats").json()["content"][0]["text"])
    return result


def until_status(gw: Gateway, task_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = gw.get(f"{API}/task/{task_id}").json()
        if task["status"] == status:
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


def test_tasks_run_and_answer_with_their_result(tmp_path: Path, queue: dict[str, str]) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, env=queue) as gw:
        target = {"server": "fault", "tool": "echo", "arguments": {"text": "queued"}}
        task_id = enqueue(gw, {"target": target, "idempotency_key": "k1"})
        task = wait(gw, task_id)
        assert task["status"] == "succeeded" and task["attempts"] == 1
        assert task["worker"] == "test" and task["idempotency_key"] == "k1"
        assert task["result"]["content"][0]["text"] == "queued"
        again = gw.http.post(f"{API}/enqueue", json={"target": target, "idempotency_key": "k1"})
        assert again.json() == {"task_id": task_id, "created": False}
        listed = gw.get(f"{API}/tasks", params={"status": "succeeded"}).json()["items"]
        assert [t["id"] for t in listed] == [task_id]
        health = gw.get(f"{API}/health").json()["queue"]
        assert health["tasks"] == {"succeeded": 1}
        assert health["backend"] == ("redis" if queue else "embedded")


def test_bad_tasks_are_refused_at_enqueue(tmp_path: Path, queue: dict[str, str]) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, env=queue) as gw:
        cases: list[tuple[dict[str, Any], int]] = [
            ({"target": {"server": "nope", "tool": "echo"}}, 404),
            ({"target": {"server": "fault", "tool": "nope"}}, 404),
            ({"target": {"service": "nobody", "path": "/x"}}, 404),
            ({"target": {"server": "fault", "tool": "echo", "arguments": [1]}}, 422),
            ({"target": {"server": "fault", "tool": "echo"}, "max_attempts": 0}, 422),
            ({"target": {"server": "fault", "tool": "echo"}, "callback_url": "ftp://x"}, 422),
            ({"target": {"server": "fault", "tool": "echo"}, "surprise": True}, 422),
            ({"nothing": 1}, 422),
        ]
        for body, status in cases:
            r = gw.http.post(f"{API}/enqueue", json=body)
            assert r.status_code == status, (body, r.text)
        huge = {"target": {"server": "fault", "tool": "echo", "arguments": {"t": "x" * 2_000_000}}}
        assert gw.http.post(f"{API}/enqueue", json=huge).status_code == 413
        assert gw.get(f"{API}/tasks").json()["items"] == []  # nothing was stored
        assert gw.get(f"{API}/task/t-nope").status_code == 404
        assert gw.http.delete(f"{API}/task/t-nope").status_code == 404


def test_cancelling_queued_and_running_tasks(tmp_path: Path, queue: dict[str, str]) -> None:
    env = {"MESHGATE_TASK_CONCURRENCY": "1", **queue}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        running = enqueue(gw, {"target": {"server": "fault", "tool": "hang"}})
        queued = enqueue(gw, {"target": {"server": "fault", "tool": "write"}})
        until_status(gw, running, "running")
        deadline = time.monotonic() + 10
        cancelled_before = len(stats(gw)["cancelled"])
        r = gw.http.delete(f"{API}/task/{queued}")
        assert r.json()["status"] == "cancelled" and r.json()["was"] == "queued"
        r = gw.http.delete(f"{API}/task/{running}")
        assert r.json()["status"] == "cancelled" and r.json()["was"] == "running"
        assert wait(gw, running)["status"] == "cancelled"
        while len(stats(gw)["cancelled"]) == cancelled_before:  # the server heard of it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # One worker, in order: once a later write has run, the cancelled one had its turn.
        later = enqueue(gw, {"target": {"server": "fault", "tool": "write"}})
        task = wait(gw, later)
        assert task["status"] == "succeeded"
        assert task["result"]["content"][0]["text"] == "1"  # the first write the server saw
        assert stats(gw)["counter"] == 1
        assert wait(gw, queued)["status"] == "cancelled"


def test_failing_tasks_retry_then_die_and_can_be_retried(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, env=queue) as gw:
        task_id = enqueue(gw, {"target": {"server": "fault", "tool": "fail"}, "max_attempts": 2})
        task = wait(gw, task_id)
        assert task["status"] == "dead" and task["attempts"] == 2
        assert "injected failure" in json.dumps(task["error"])
        r = gw.http.post(f"{API}/task/{task_id}/retry")
        # Queued again; another node's worker (a shared Redis queue) may have taken it already.
        assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
        assert wait(gw, task_id)["status"] == "dead"
        bad = enqueue(gw, {"target": {"server": "fault", "tool": "echo", "arguments": {}}})
        task = wait(gw, bad)
        assert task["status"] == "failed" and task["attempts"] == 1  # invalid arguments: no retry
        ok = enqueue(
            gw, {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "x"}}}
        )
        assert gw.http.post(f"{API}/task/{wait(gw, ok)['id']}/retry").status_code == 422


def test_accepted_tasks_survive_a_gateway_kill(tmp_path: Path, queue: dict[str, str]) -> None:
    env = {
        "MESHGATE_TASK_CONCURRENCY": "2",
        "MESHGATE_DATA_DIR": str(tmp_path / "state"),
        **queue,
    }
    target = {"server": "fault", "tool": "sleep", "arguments": {"seconds": 0.3}}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        ids = [enqueue(gw, {"target": target}) for _ in range(10)]
        deadline = time.monotonic() + 30
        while True:  # killed with some done and some running
            counts = gw.get(f"{API}/health").json()["queue"]["tasks"]
            if counts.get("succeeded", 0) >= 1 and counts.get("running", 0) >= 1:
                break
            assert counts.get("succeeded", 0) < 10, "every task ended before the kill"
            assert time.monotonic() < deadline, counts
            time.sleep(0.02)
        gw.process.stop(signal.SIGKILL)
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        finals = [wait(gw, task_id, timeout=60) for task_id in ids]
        assert [t["status"] for t in finals] == ["succeeded"] * 10


def test_a_target_runs_at_most_its_task_concurrency(tmp_path: Path, queue: dict[str, str]) -> None:
    policy = "[servers.fault]\ntask_concurrency = 2\n"
    with run_gateway(tmp_path, {"fault": fault_server()}, policy, env=queue) as gw:
        target = {"server": "fault", "tool": "sleep", "arguments": {"seconds": 0.3}}
        ids = [enqueue(gw, {"target": target}) for _ in range(6)]
        assert [wait(gw, task_id)["status"] for task_id in ids] == ["succeeded"] * 6
        assert stats(gw)["peak_sleeping"] == 2


def test_final_tasks_are_forgotten_after_the_result_ttl(
    tmp_path: Path, queue: dict[str, str]
) -> None:
    env = {"MESHGATE_TASK_RESULT_TTL_S": "1", **queue}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        target = {"server": "fault", "tool": "echo", "arguments": {"text": "x"}}
        task_id = enqueue(gw, {"target": target, "idempotency_key": "once"})
        assert wait(gw, task_id)["status"] == "succeeded"
        deadline = time.monotonic() + 15
        while gw.get(f"{API}/task/{task_id}").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert gw.get(f"{API}/tasks").json()["items"] == []
        assert gw.get(f"{API}/health").json()["queue"]["tasks"] == {}
        again = gw.http.post(f"{API}/enqueue", json={"target": target, "idempotency_key": "once"})
        assert again.json()["created"] is True  # the key went with the task


class _Sink(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_http_targets_and_callbacks(tmp_path: Path, queue: dict[str, str]) -> None:
    _Sink.received = []
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        with run_gateway(tmp_path, {"fault": fault_server()}, env=queue) as gw:
            reg = {
                "name": "hook",
                "url": f"http://127.0.0.1:{sink.server_address[1]}",
                "check": {"type": "tcp"},
            }
            assert gw.http.post(f"{API}/register", json=reg).status_code == 201
            deadline = time.monotonic() + 10
            while gw.get(f"{API}/services/hook").json()["state"] != "healthy":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            callback = f"http://127.0.0.1:{sink.server_address[1]}/done"
            task_id = enqueue(
                gw,
                {
                    "target": {
                        "service": "hook",
                        "method": "POST",
                        "path": "/in",
                        "body": {"a": 1},
                    },
                    "callback_url": callback,
                },
            )
            task = wait(gw, task_id)
            assert task["status"] == "succeeded" and task["result"]["status"] == 204
            while len(_Sink.received) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert _Sink.received[0] == {"a": 1}
            assert _Sink.received[1]["id"] == task_id and _Sink.received[1]["status"] == "succeeded"
            # The callback shows the task as the API does, times included.
            for key in ("created_at", "started_at", "finished_at"):
                assert RFC3339_MS.fullmatch(task[key]), task
                assert _Sink.received[1][key] == task[key]
    finally:
        sink.shutdown()


# -- what only a shared (Redis) queue does -------------------------------------------------------


def test_a_dead_nodes_tasks_are_taken_over_by_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {
        "MESHGATE_QUEUE": redis_server.url,
        "MESHGATE_TASK_LEASE_S": "2",
        "MESHGATE_TASK_CONCURRENCY": "2",
    }
    target = {"server": "fault", "tool": "sleep", "arguments": {"seconds": 1.0}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_gateway(tmp_path / "a", {"fault": fault_server()}, env=env, node="a") as a:
        ids = [enqueue(a, {"target": target}) for _ in range(8)]
        deadline = time.monotonic() + 10
        while (
            len(running := a.get(f"{API}/tasks", params={"status": "running"}).json()["items"]) < 2
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        orphans = {t["id"] for t in running}
        assert {t["worker"] for t in running} == {"a"}
        a.process.stop(signal.SIGKILL)
    with run_gateway(tmp_path / "b", {"fault": fault_server()}, env=env, node="b") as b:
        finals = {task_id: wait(b, task_id, timeout=60) for task_id in ids}
        assert [t["status"] for t in finals.values()] == ["succeeded"] * 8
        for task_id in orphans:  # taken over once a's lease ran out, and run again
            assert finals[task_id]["worker"] == "b" and finals[task_id]["attempts"] == 2


def test_a_cancel_and_a_long_poll_reach_across_nodes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"MESHGATE_QUEUE": redis_server.url}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        run_gateway(tmp_path / "a", {"fault": fault_server()}, env=env, node="a") as a,
        run_gateway(tmp_path / "b", {"fault": fault_server()}, env=env, node="b") as b,
    ):
        nodes = {"a": a, "b": b}
        task_id = enqueue(a, {"target": {"server": "fault", "tool": "hang"}})
        worker = until_status(a, task_id, "running")["worker"]
        runner, other = nodes[worker], nodes["b" if worker == "a" else "a"]
        r = other.http.delete(f"{API}/task/{task_id}")
        assert r.json()["status"] == "cancelled" and r.json()["was"] == "running"
        deadline = time.monotonic() + 10
        while not stats(runner)["cancelled"]:  # the server on the running node heard of it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        echo = {"server": "fault", "tool": "sleep", "arguments": {"seconds": 0.5}}
        quick = enqueue(a, {"target": echo})
        started = time.monotonic()
        # Wherever it ran, b's long poll was woken by it, not ended by its own wait_s.
        assert wait(b, quick, timeout=60)["status"] == "succeeded"
        assert time.monotonic() - started < 30


def test_redis_going_away_is_a_clear_503_and_work_resumes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {"MESHGATE_QUEUE": redis_server.url}
    target = {"server": "fault", "tool": "echo", "arguments": {"text": "after"}}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        redis_server.stop()
        r = gw.http.post(f"{API}/enqueue", json={"target": target})
        assert r.status_code == 503, r.text
        assert r.json()["type"].endswith("/queue-unavailable") and "Retry-After" in r.headers
        assert gw.get(f"{API}/task/t-any").status_code == 503
        health = gw.get(f"{API}/health").json()["queue"]
        assert health["tasks"] is None and "unreachable" in health["error"]
        redis_server.start()
        task_id = enqueue(gw, {"target": target})
        assert wait(gw, task_id)["result"]["content"][0]["text"] == "after"
