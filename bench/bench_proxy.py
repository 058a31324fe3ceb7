"""The HTTP service proxy under concurrency: a backend directly, through nginx and HAProxy as
plain reverse proxies, and through meshgate's `/api/v1/mesh/v2/call/{service}/...`.

    .venv/bin/python bench/bench_proxy.py [--duration 3] [--rounds 3] [--concurrency 1 2 4 8 16]
                                          [--baseline-rev REV ...] [--sustained 60]

One trivial ASGI backend (uvicorn with its defaults, uvloop and httptools when installed,
`--backend-workers` processes, 1 by default) serves every mode of the run, on a loopback port
the OS chose. nginx and HAProxy (Debian packages, when installed) run as this script's own
processes from configurations written into a temp dir: one worker, keep-alive connections to
the backend, as one meshgate process has. meshgate knows the backend as a static
`[[mesh.services]]` entry with an HTTP check. wrk (keep-alive, GET, Debian package `wrk`)
drives each mode in turn for `--duration` seconds at each concurrency, `--rounds` times, so
drift of the machine hits every mode alike; the best and the median round are reported.
`--baseline-rev` adds a gateway for each revision of this repository it names (its `src`,
extracted with `git archive` into the temp dir) to the same alternation.

`--sustained S` instead drives meshgate alone (after the baseline revisions', if any are given)
at concurrency 16 for S seconds and reports requests/s, p50/p95/p99 and errors (wrk counts non-2xx
answers, connect, read, write and timeout errors).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx

from bench_echo import REPO, WRK_DONE, revision_src, wrk_once
from meshgate.testing.gateway import GatewayProcess, start_gateway

BENCH = Path(__file__).resolve().parent
SERVICE = "echo"
PATH = "/hello?x=1"
BODY = b'{"ok":true}'

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def backend(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    """The benchmark's backend: reads the request body, answers 200 with a small JSON body."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def free_port() -> int:
    """A loopback port the OS has just handed out (for servers that cannot report theirs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_answers(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} did not answer in {timeout} s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop a process this script started, by its PID; killed if it lingers."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_backend(fd: int) -> None:
    """Serve `backend` on an inherited listening socket (the family read from the socket:
    uvicorn's own `--fd` takes every descriptor for a Unix socket, so TCP_NODELAY is never
    set and each answer waits out the peer's delayed ACK)."""
    import uvicorn

    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(backend, log_config=None, access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def run_backend(workers: int) -> Iterator[str]:
    """`workers` backend processes sharing one socket bound here (port from the OS)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    cmd = [sys.executable, __file__, "--serve-backend", str(sock.fileno())]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [
        subprocess.Popen(cmd, pass_fds=[sock.fileno()], env=env, stdin=subprocess.DEVNULL)
        for _ in range(workers)
    ]
    sock.close()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answers(url + "/healthz")
        yield url
    finally:
        for proc in procs:
            stop(proc)


NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{
        server {backend};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend front
    bind 127.0.0.1:{port}
    default_backend back
backend back
    http-reuse always
    server s1 {backend}
"""


@contextlib.contextmanager
def run_nginx(tmp: Path, backend_url: str) -> Iterator[str]:
    """nginx as a plain reverse proxy: one worker, keep-alive to the backend."""
    tmp.mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, backend=backend_url[7:]))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    with open(tmp / "stderr", "wb") as err:
        proc = subprocess.Popen([*cmd, "-g", "daemon off;"], stdin=subprocess.DEVNULL, stderr=err)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answers(url + "/healthz")
        yield url
    finally:
        stop(proc, signal.SIGQUIT)  # graceful: the master stops its worker


@contextlib.contextmanager
def run_haproxy(tmp: Path, backend_url: str) -> Iterator[str]:
    """HAProxy as a plain reverse proxy: one thread, connections to the backend reused."""
    tmp.mkdir()
    port = free_port()
    conf = tmp / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, backend=backend_url[7:]))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    with open(tmp / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [haproxy, "-db", "-f", str(conf)], stdin=subprocess.DEVNULL, stderr=err
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answers(url + "/healthz")
        yield url
    finally:
        stop(proc, signal.SIGUSR1)  # soft stop


def gateway_policy(backend_url: str) -> str:
    return (
        '[mesh]\nlog_level = "warning"\n'
        f'[[mesh.services]]\nname = "{SERVICE}"\nurl = "{backend_url}"\n'
        'check = {type = "http", path = "/healthz", interval_s = 5}\n'
        f"[services.{SERVICE}]\nmax_in_flight = 64\n"
    )


@contextlib.contextmanager
def run_gateway(tmp: Path, backend_url: str, src: str | None = None) -> Iterator[str]:
    """meshgate with the backend as a static service, ready once the service is healthy."""
    tmp.mkdir()
    gw: GatewayProcess = start_gateway(
        tmp, {}, gateway_policy(backend_url), args=["--log-level", "info"], src=src
    )
    try:
        end = time.monotonic() + 30
        while True:
            r = httpx.get(f"{gw.url}/api/v1/mesh/v2/services/{SERVICE}", timeout=5)
            if r.status_code == 200 and r.json()["state"] == "healthy":
                break
            if time.monotonic() > end:
                raise RuntimeError(f"{SERVICE} not healthy: {r.text}\n" + "\n".join(gw.log[-20:]))
            time.sleep(0.05)
        yield f"{gw.url}/api/v1/mesh/v2/call/{SERVICE}"
    finally:
        gw.stop()


def wrk_run(url: str, concurrency: int, duration: int, script: Path) -> dict[str, float]:
    """One wrk run: requests/s (`rps`), latency percentiles (ms) and errors."""
    r = wrk_once(url, script, concurrency, duration)
    return {**r, "rps": r["calls_per_s"]}


def table(results: dict[str, dict[int, list[dict[str, float]]]], levels: list[int]) -> str:
    lines = [
        "| path | c | req/s (best) | req/s (median) | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in levels:
        for mode, by_level in results.items():
            runs = by_level[c]
            best = max(runs, key=lambda r: r["rps"])
            median = statistics.median(r["rps"] for r in runs)
            errors = sum(r["errors"] for r in runs)
            lines.append(
                f"| {mode} | {c} | {best['rps']:.0f} | {median:.0f} | {best['p50_ms']:.2f} | "
                f"{best['p95_ms']:.2f} | {best['p99_ms']:.2f} | {errors:.0f} |"
            )
    return "\n".join(lines)


def ratios(results: dict[str, dict[int, list[dict[str, float]]]], levels: list[int]) -> str:
    lines = []
    direct = results["direct"]
    for mode, by_level in results.items():
        if mode == "direct":
            continue
        parts = []
        for c in levels:
            d = statistics.median(r["rps"] for r in direct[c])
            m = statistics.median(r["rps"] for r in by_level[c])
            parts.append(f"c={c} {m / d:.2f}")
        lines.append(f"- {mode} / direct (medians): " + ", ".join(parts))
    return "\n".join(lines)


def alternate(args: argparse.Namespace, urls: dict[str, str], script: Path) -> None:
    results: dict[str, dict[int, list[dict[str, float]]]] = {
        mode: {c: [] for c in args.concurrency} for mode in urls
    }
    for url in urls.values():  # warm-up: connections, caches, the JIT-less interpreter's dicts
        wrk_run(url, 4, 1, script)
    for _ in range(args.rounds):
        for c in args.concurrency:
            for mode, url in urls.items():
                results[mode][c].append(wrk_run(url, c, args.duration, script))
    print(
        f"GET {PATH}, {len(BODY)}-byte answers; wrk {args.duration} s x {args.rounds} rounds per "
        f"row, alternating; backend: uvicorn, {args.backend_workers} worker(s); "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print()
    print(table(results, args.concurrency))
    print()
    print(ratios(results, args.concurrency))


def sustained(seconds: int, urls: dict[str, str], script: Path) -> None:
    print(f"concurrency 16, {seconds} s each, one after the other (wrk, keep-alive, GET {PATH})")
    print()
    print("| path | req/s | p50 ms | p95 ms | p99 ms | requests | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, url in urls.items():
        wrk_run(url, 4, 2, script)  # warm-up
        r = wrk_run(url, 16, seconds, script)
        print(
            f"| {mode} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['requests']:.0f} | {r['errors']:.0f} |"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--backend-workers", type=int, default=1)
    p.add_argument(
        "--baseline-rev", nargs="+", default=[], help="also run these git revisions' gateways"
    )
    p.add_argument("--sustained", type=int, metavar="SECONDS", help="meshgate only, c=16")
    p.add_argument("--serve-backend", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_backend is not None:
        serve_backend(args.serve_backend)
        return 0
    if not shutil.which("wrk"):
        print("wrk is missing (Debian package wrk)", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        script = tmp / "done.lua"
        script.write_text(WRK_DONE)
        backend_url = stack.enter_context(run_backend(args.backend_workers))
        gateways = {}
        for rev in args.baseline_rev:
            src = revision_src(rev, tmp)
            gateways[f"meshgate {rev}"] = stack.enter_context(
                run_gateway(tmp / f"gateway-{rev}", backend_url, src)
            )
        gateways["meshgate"] = stack.enter_context(run_gateway(tmp / "gateway", backend_url))
        if args.sustained:
            sustained(args.sustained, {m: url + PATH for m, url in gateways.items()}, script)
            return 0
        peers = {}
        if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
            peers["nginx 1 worker"] = stack.enter_context(run_nginx(tmp / "nginx", backend_url))
        if shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists():
            peers["HAProxy 1 thread"] = stack.enter_context(
                run_haproxy(tmp / "haproxy", backend_url)
            )
        urls = {"direct": backend_url, **peers, **gateways}
        alternate(args, {mode: url + PATH for mode, url in urls.items()}, script)
    return 0


if __name__ == "__main__":
    sys.exit(main())
