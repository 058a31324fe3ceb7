"""The listener's connection bounds against a real gateway and real sockets: idle and slow
(slowloris) connections are closed, a flood beyond `max_connections` is refused at once, stalled
bodies get 408, idle kept-alive connections end, oversized heads get 431; normal requests are
served meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.testing.gateway import GatewayProcess, start_gateway

pytestmark = pytest.mark.timeout(120)

HEALTH = "/api/v1/mesh/v2/health"
SECOND = 1.0  # the timeouts of the bounded gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {
        "MESHGATE_HEADER_TIMEOUT_S": str(SECOND),
        "MESHGATE_BODY_TIMEOUT_S": str(SECOND),
        "MESHGATE_KEEP_ALIVE_S": str(SECOND),
        "MESHGATE_MAX_HEADER_BYTES": "4096",
    }
    process = start_gateway(tmp_path_factory.mktemp("bounded"), {}, env=env)
    try:
        yield process
    finally:
        process.stop()


def _address(gw: GatewayProcess) -> tuple[str, int]:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _request(path: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _responses(
    sock: socket.socket, count: int, timeout: float = 10
) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` responses read off a raw socket, in order: status, headers, body. Bytes of
    the next response that came in the same read are kept for it (pipelined answers on a
    busy machine come in one segment)."""
    sock.settimeout(timeout)
    data = b""
    answers: list[tuple[int, dict[str, str], bytes]] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed before a response: {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed mid-body"
            data += chunk
        answers.append((int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    assert not data, f"more than {count} response(s): {data!r}"
    return answers


def _response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One response read off a raw socket: status, headers, body."""
    return _responses(sock, 1, timeout)[0]


def _closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Wait until the gateway closes `sock`; return what it sent before."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _wait_all_closed(socks: list[socket.socket], deadline_s: float) -> dict[int, bytes]:
    """Wait until every socket is closed by the peer; what each received, by index."""
    sel = selectors.DefaultSelector()
    received: dict[int, bytes] = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    end = time.monotonic() + deadline_s
    open_ = set(range(len(socks)))
    while open_:
        left = end - time.monotonic()
        assert left > 0, f"{len(open_)} of {len(socks)} connections still open"
        for key, _ in sel.select(left):
            i = key.data
            try:
                chunk = socks[i].recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[i] = received.get(i, b"") + chunk
            else:
                sel.unregister(socks[i])
                open_.discard(i)
    sel.close()
    return received


def test_idle_and_slowloris_connections_are_closed_while_requests_are_served(
    gw: GatewayProcess,
) -> None:
    address = _address(gw)
    idle = [socket.create_connection(address) for _ in range(300)]
    slow = [socket.create_connection(address) for _ in range(50)]
    head = _request(HEALTH, "X-Filler: " + "a" * 200)
    stop = threading.Event()

    def drip() -> None:  # slowloris: a byte of the head every 0.1 s, never its end
        for i in range(len(head) - 4):
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(head[i : i + 1])
            if stop.wait(0.1):
                return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        # Served meanwhile, on new connections.
        for _ in range(5):
            assert httpx.get(gw.url + HEALTH, timeout=10).status_code == 200
        started = time.monotonic()
        received = _wait_all_closed([*idle, *slow], deadline_s=10 * SECOND)
        took = time.monotonic() - started
    finally:
        stop.set()
        dripper.join(5)
        for s in [*idle, *slow]:
            s.close()
    # Idle connections are closed without a word; slow heads get 408 problem+json.
    assert not any(i < len(idle) for i in received), "an idle connection got an answer"
    for i in range(len(idle), len(idle) + len(slow)):
        assert received[i].startswith(b"HTTP/1.1 408 "), received.get(i)
        assert b"request-timeout" in received[i]
    assert took < 10 * SECOND
    assert httpx.get(gw.url + HEALTH, timeout=10).status_code == 200


def test_connections_beyond_max_connections_are_refused_at_once(tmp_path: Path) -> None:
    env = {"MESHGATE_MAX_CONNECTIONS": "50", "MESHGATE_KEEP_ALIVE_S": "60"}
    gw = start_gateway(tmp_path, {}, env=env)
    held: list[socket.socket] = []
    try:
        address = _address(gw)
        # 50 kept-alive connections, each has had its answer: the listener holds all 50.
        for _ in range(50):
            s = socket.create_connection(address)
            s.sendall(_request(HEALTH))
            assert _response(s)[0] == 200
            held.append(s)
        refused = []
        for _ in range(20):
            s = socket.create_connection(address)
            s.sendall(_request(HEALTH))
            status, headers, body = _response(s)
            assert status == 503
            assert headers["content-type"] == "application/problem+json"
            assert headers["connection"] == "close" and "retry-after" in headers
            problem: dict[str, Any] = json.loads(body)
            assert problem["type"].endswith("/too-many-connections")
            assert "50" in problem["detail"]
            assert _closed(s) == b""
            refused.append(s)
        for s in refused:
            s.close()
        # The held connections were not disturbed: each still serves a request.
        for s in held[:5]:
            s.sendall(_request(HEALTH))
            assert _response(s)[0] == 200
        # Once some close, new connections are served again.
        for s in held[:10]:
            s.close()
        end = time.monotonic() + 10
        while True:
            try:
                if httpx.get(gw.url + HEALTH, timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "no connection accepted after others closed"
            time.sleep(0.05)
    finally:
        for s in held:
            s.close()
        gw.stop()


def test_a_stalled_body_gets_408_and_a_steady_one_is_served(gw: GatewayProcess) -> None:
    path = "/api/v1/mcp/servers/none/tools/none"
    headers = ("Content-Type: application/json", "Content-Length: 100")
    with socket.create_connection(_address(gw)) as s:
        s.sendall(_request(path, *headers, method="POST", body=b'{"arguments": '))
        status, _, body = _response(s)
        assert status == 408
        assert json.loads(body)["type"].endswith("/request-timeout")
        assert _closed(s) == b""
    # The whole body in time: the request reaches the app (no such server: 404).
    r = httpx.post(gw.url + path, json={"arguments": {}}, timeout=10)
    assert r.status_code == 404


def test_an_idle_kept_alive_connection_is_closed(gw: GatewayProcess) -> None:
    with socket.create_connection(_address(gw)) as s:
        s.sendall(_request(HEALTH))
        assert _response(s)[0] == 200
        s.sendall(_request(HEALTH))  # kept alive: a second request is served
        assert _response(s)[0] == 200
        assert _closed(s, timeout=10 * SECOND) == b""  # then idle: closed without a word


def test_slowloris_between_requests_on_a_kept_alive_connection(gw: GatewayProcess) -> None:
    with socket.create_connection(_address(gw)) as s:
        s.sendall(_request(HEALTH))
        assert _response(s)[0] == 200
        s.sendall(b"GET " + HEALTH.encode())  # the next request begins, and stalls
        status, _, body = _response(s)
        assert status == 408 and b"request-timeout" in body


def test_heads_alone_pipelined_requests_and_100_continue_are_answered_whole(
    gw: GatewayProcess,
) -> None:
    """A response's head waits for its body to be written with it: a HEAD (no body follows)
    still gets its head at once, pipelined requests get their answers in order, and a
    `100 Continue` goes out before the head it precedes."""
    with socket.create_connection(_address(gw)) as s:
        s.sendall(_request(HEALTH, method="HEAD"))
        s.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            assert chunk, head
            head += chunk
        # (405: the API's GET routes do not take HEAD; what matters is that a head came)
        assert head.startswith(b"HTTP/1.1 405 ") and head.endswith(b"\r\n\r\n"), head
        assert b"content-length: " in head.lower()
        s.sendall(_request(HEALTH) + _request("/livez") + _request(HEALTH))
        answers = _responses(s, 3)
        assert [a[0] for a in answers] == [200, 200, 200]
        assert json.loads(answers[0][2]) == json.loads(answers[2][2])
        s.sendall(
            _request(
                "/api/v1/mesh/v2/register",
                "Content-Type: application/json",
                "Content-Length: 2",
                "Expect: 100-continue",
                method="POST",
            )
        )
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"{}")
        status, _, body = _response(s)
        assert status == 422, body


def test_oversized_heads_get_431(gw: GatewayProcess) -> None:
    address = _address(gw)
    with socket.create_connection(address) as s:
        s.sendall(_request(HEALTH, "X-Big: " + "b" * 2000))  # under the bound: served
        assert _response(s)[0] == 200
    with socket.create_connection(address) as s:
        s.sendall(_request(HEALTH, "X-Big: " + "b" * 8000))  # a whole head over the bound
        status, headers, body = _response(s)
        assert status == 431 and headers["content-type"] == "application/problem+json"
        assert json.loads(body)["type"].endswith("/headers-too-large")
    with socket.create_connection(address) as s:
        # A head that never ends: refused once it passes the bound, not buffered for ever.
        s.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
        try:
            for _ in range(64):
                s.sendall(b"c" * 1024)
        except OSError:
            pass  # closed by the gateway: what the test expects
        status, _, body = _response(s)
        assert status == 431 and b"headers-too-large" in body


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MESHGATE_MAX_CONNECTIONS", "0"),
        ("MESHGATE_HEADER_TIMEOUT_S", "0"),
        ("MESHGATE_BODY_TIMEOUT_S", "-1"),
        ("MESHGATE_KEEP_ALIVE_S", "soon"),
        ("MESHGATE_MAX_HEADER_BYTES", "100"),
    ],
)
def test_bad_bounds_stop_the_start_naming_the_setting(
    tmp_path: Path, variable: str, value: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshgate.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path,
        env={**os.environ, "MESHGATE_DATA_DIR": str(tmp_path / "data"), variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    setting = variable.removeprefix("MESHGATE_").lower()
    assert f"environment {variable}: mesh.{setting}:" in proc.stderr
    assert "listening" not in proc.stderr
