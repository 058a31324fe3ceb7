"""A tiny HTTP agent that registers itself with meshgate: a real service for the examples.

    python examples/agents/agent.py NAME [--port 0] [--mesh http://127.0.0.1:8800] [--ttl 10]

It serves `GET /health` (200, or 503 after `POST /sick`), `GET /whoami`, `GET /headers` (what
it received), `POST /echo`, and
for fault drills `GET /sleep?seconds=N` and `GET /garbage` (an answer that is not HTTP);
registers with the gateway at start (with a TTL it keeps alive with heartbeats), and
deregisters on SIGTERM or Ctrl-C. Only the standard library: nothing to install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class Agent(BaseHTTPRequestHandler):
    server_version = "meshgate-agent/1"
    name = "agent"
    healthy = True

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    def do_GET(self) -> None:
        if self.route == "/health":
            ok = type(self).healthy
            self._send(200 if ok else 503, {"status": "ok" if ok else "sick"})
        elif self.route == "/whoami":
            self._send(200, {"name": type(self).name, "pid": os.getpid()})
        elif self.route == "/headers":
            self._send(200, {k.lower(): v for k, v in self.headers.items()})
        elif self.route == "/sleep":
            seconds = float(self.path.partition("seconds=")[2] or 1)
            time.sleep(seconds)
            self._send(200, {"slept": seconds})
        elif self.route == "/garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            self.close_connection = True
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            self.rfile.readline()  # the last, empty line
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_POST(self) -> None:
        body = self._body()
        if self.route == "/sick":
            type(self).healthy = False
            self._send(200, {"status": "sick"})
        elif self.route == "/echo":
            self._send(200, {"name": type(self).name, "echo": body.decode(errors="replace")})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("name")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mesh", default=os.environ.get("MESHGATE_URL", "http://127.0.0.1:8800"))
    p.add_argument("--ttl", type=float, default=10.0)
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--depends-on", action="append", default=[], help="a service it calls")
    args = p.parse_args()

    Agent.name = args.name
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Agent)
    port = httpd.server_address[1]
    api = args.mesh.rstrip("/") + "/api/v1/mesh/v2"
    status, me = call(
        "POST",
        f"{api}/register",
        {
            "name": args.name,
            "url": f"http://127.0.0.1:{port}",
            "tags": ["agent", *args.tag],
            "check": {"type": "http", "path": "/health", "interval_s": 1, "timeout_s": 1},
            "ttl_s": args.ttl,
            "depends_on": args.depends_on,
        },
    )
    if status not in (200, 201):
        print(f"registration refused ({status}): {me}", file=sys.stderr)
        return 1
    print(f"{args.name} on port {port}, registered as {me['id']}", flush=True)
    instance = f"{api}/services/{args.name}/instances/{me['id']}"
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(args.ttl / 3):
            call("PUT", f"{instance}/heartbeat")

    threading.Thread(target=beat, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    with contextlib.suppress(KeyboardInterrupt):
        httpd.serve_forever()
    stop.set()
    call("DELETE", instance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
