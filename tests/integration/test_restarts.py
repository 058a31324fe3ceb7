"""Restarts through a real gateway: a first crash is replaced at once, a crash loop backs off
and ends `failed`."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gateway import Gateway, fault_server, run_gateway, wait_gone

pytestmark = pytest.mark.timeout(120)

# A backoff this long would keep a restarted slot down for up to an hour: a replacement that
# comes within seconds did not wait for one (full jitter makes that chance 30 s / 3600 s).
LONG_BACKOFF = """
[servers.f.restart]
backoff_base_s = 3600
backoff_cap_s = 3600
max_failures = 5
"""

RESTARTING = re.compile(r"^f-1: restarting (at once|in ([0-9.]+)s) \(failures in a row: (\d+) of")


def messages(gw: Gateway) -> list[str]:
    """The gateway's log messages so far."""
    out = []
    for line in list(gw.log):
        if line.startswith("{"):
            out.append(str(json.loads(line)["msg"]))
    return out


def wait_message(
    gw: Gateway, pattern: re.Pattern[str], count: int, timeout: float = 30
) -> list[str]:
    """Wait until `count` log messages match; return the matching ones."""
    end = time.monotonic() + timeout
    while True:
        found = [m for m in messages(gw) if pattern.search(m)]
        if len(found) >= count:
            return found
        assert time.monotonic() < end, f"{pattern.pattern!r} logged {len(found)} times"
        time.sleep(0.02)


def replaced(gw: Gateway, old_pid: int, timeout: float = 30) -> dict[str, Any]:
    view = gw.wait_for(
        "f",
        lambda v: v["instances"][0]["state"] == "healthy" and v["instances"][0]["pid"] != old_pid,
        timeout=timeout,
    )
    inst: dict[str, Any] = view["instances"][0]
    return inst


def test_first_crash_is_replaced_at_once_and_a_repeat_waits_for_the_backoff(
    tmp_path: Path,
) -> None:
    with run_gateway(tmp_path, {"f": fault_server()}, LONG_BACKOFF) as gw:
        [first] = gw.instances("f")
        os.kill(first["pid"], signal.SIGKILL)
        second = replaced(gw, first["pid"])
        assert second["restarts"] == 1
        assert gw.call("f", "echo", {"text": "back"}).status_code == 200
        [at_once] = wait_message(gw, RESTARTING, 1)
        assert RESTARTING.match(at_once) and "at once (failures in a row: 1 of 5)" in at_once

        # The replacement crashes too, before it ran `stable_after_s`: now the slot backs off.
        os.kill(second["pid"], signal.SIGKILL)
        assert not wait_gone({second["pid"]}, 5)
        repeat = wait_message(gw, RESTARTING, 2)[1]
        m = RESTARTING.match(repeat)
        assert m is not None and m.group(2) is not None and m.group(3) == "2", repeat
        assert float(m.group(2)) > 0
        [waiting] = gw.instances("f")
        assert waiting["state"] == "stopped" and waiting["pid"] == second["pid"]
        r = gw.call("f", "echo", {"text": "x"}, timeout_s=0.5)
        assert r.status_code in (503, 504), r.text


def test_crash_loop_backs_off_after_the_first_failure_and_ends_failed(tmp_path: Path) -> None:
    policy = """
[servers.f.restart]
backoff_base_s = 0.05
max_failures = 3
"""
    with run_gateway(tmp_path, {"f": fault_server()}, policy) as gw:
        pid = gw.instances("f")[0]["pid"]
        for _ in range(2):
            os.kill(pid, signal.SIGKILL)
            pid = replaced(gw, pid)["pid"]
        os.kill(pid, signal.SIGKILL)
        view = gw.wait_for("f", lambda v: v["instances"][0]["state"] == "failed")
        failed = view["instances"][0]
        assert failed["restarts"] == 2
        assert "exited with code -9" in failed["last_error"]

        log = messages(gw)
        restarts = [RESTARTING.match(m) for m in log if RESTARTING.match(m)]
        assert [(m.group(1) == "at once", m.group(3)) for m in restarts if m] == [
            (True, "1"),
            (False, "2"),
        ]
        gave_up = [i for i, m in enumerate(log) if m.startswith("f-1: stopped -> failed (3 ")]
        second_restart = next(i for i, m in enumerate(log) if "(failures in a row: 2 of 3)" in m)
        assert gave_up and gave_up[0] > second_restart


def test_a_leader_that_dies_takes_the_child_holding_its_stdout(tmp_path: Path) -> None:
    # `sh` runs the server as its child (not exec: a command follows), as `npx` runs `node`:
    # killing the leader leaves the child holding the pipes until the group is ended.
    entry = fault_server()
    command = " ".join([entry["command"], *entry["args"]]) + "; exit 0"
    with run_gateway(tmp_path, {"f": {"command": "/bin/sh", "args": ["-c", command]}}) as gw:
        [leader] = gw.instances("f")
        r = gw.call("f", "pid")
        child = int(r.json()["content"][0]["text"])
        assert child != leader["pid"]
        os.kill(leader["pid"], signal.SIGKILL)
        assert not wait_gone({leader["pid"], child}, 10)
        after = replaced(gw, leader["pid"])
        assert after["restarts"] == 1
        assert int(gw.call("f", "pid").json()["content"][0]["text"]) not in (child, leader["pid"])
