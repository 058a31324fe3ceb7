"""The task queue: every accepted task runs to a final state, through the router, durably."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

API = "/api/v1/mesh/v2"


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


def test_tasks_run_and_answer_with_their_result(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        target = {"server": "fault", "tool": "echo", "arguments": {"text": "queued"}}
        task_id = enqueue(gw, {"target": target, "idempotency_key": "k1"})
        task = wait(gw, task_id)
        assert task["status"] == "succeeded" and task["attempts"] == 1
        assert task["result"]["content"][0]["text"] == "queued"
        again = gw.http.post(f"{API}/enqueue", json={"target": target, "idempotency_key": "k1"})
        assert again.json() == {"task_id": task_id, "created": False}
        listed = gw.get(f"{API}/tasks", params={"status": "succeeded"}).json()["items"]
        assert [t["id"] for t in listed] == [task_id]
        queue = gw.get(f"{API}/health").json()["queue"]
        assert queue["tasks"] == {"succeeded": 1} and queue["backend"] == "embedded"


def test_bad_tasks_are_refused_at_enqueue(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
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


def test_cancelling_queued_and_running_tasks(tmp_path: Path) -> None:
    env = {"MESHGATE_TASK_CONCURRENCY": "1"}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        running = enqueue(gw, {"target": {"server": "fault", "tool": "hang"}})
        queued = enqueue(gw, {"target": {"server": "fault", "tool": "write"}})
        deadline = time.monotonic() + 10
        while gw.get(f"{API}/task/{running}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelled_before = len(stats(gw)["cancelled"])
        r = gw.http.delete(f"{API}/task/{queued}")
        assert r.json()["status"] == "cancelled" and r.json()["was"] == "queued"
        r = gw.http.delete(f"{API}/task/{running}")
        assert r.json()["status"] == "cancelled" and r.json()["was"] == "running"
        assert wait(gw, running)["status"] == "cancelled"
        while len(stats(gw)["cancelled"]) == cancelled_before:  # the server heard of it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # the worker is free again: the cancelled write must not run
        assert stats(gw)["counter"] == 0
        assert wait(gw, queued)["status"] == "cancelled"


def test_failing_tasks_retry_then_die_and_can_be_retried(tmp_path: Path) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        task_id = enqueue(gw, {"target": {"server": "fault", "tool": "fail"}, "max_attempts": 2})
        task = wait(gw, task_id)
        assert task["status"] == "dead" and task["attempts"] == 2
        assert "injected failure" in json.dumps(task["error"])
        r = gw.http.post(f"{API}/task/{task_id}/retry")
        assert r.status_code == 202 and r.json()["status"] == "queued"
        assert wait(gw, task_id)["status"] == "dead"
        bad = enqueue(gw, {"target": {"server": "fault", "tool": "echo", "arguments": {}}})
        task = wait(gw, bad)
        assert task["status"] == "failed" and task["attempts"] == 1  # invalid arguments: no retry
        ok = enqueue(
            gw, {"target": {"server": "fault", "tool": "echo", "arguments": {"text": "x"}}}
        )
        assert gw.http.post(f"{API}/task/{wait(gw, ok)['id']}/retry").status_code == 422


def test_accepted_tasks_survive_a_gateway_kill(tmp_path: Path) -> None:
    env = {"MESHGATE_TASK_CONCURRENCY": "2", "MESHGATE_DATA_DIR": str(tmp_path / "state")}
    target = {"server": "fault", "tool": "sleep", "arguments": {"seconds": 0.3}}
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        ids = [enqueue(gw, {"target": target}) for _ in range(10)]
        time.sleep(0.5)  # some done, some running, most queued
        gw.process.stop(signal.SIGKILL)
    with run_gateway(tmp_path, {"fault": fault_server()}, env=env) as gw:
        finals = [wait(gw, task_id, timeout=60) for task_id in ids]
        assert [t["status"] for t in finals] == ["succeeded"] * 10


class _Sink(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_http_targets_and_callbacks(tmp_path: Path) -> None:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
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
    finally:
        sink.shutdown()
