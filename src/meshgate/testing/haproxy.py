"""HAProxy in front of a cluster's gateways: its configuration and what its stats socket says."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

GATEWAY_PORT = 8080


class Backend(Protocol):
    name: str
    address: str


def backend_states(socket_path: Path) -> dict[str, str]:
    """Each node's state as HAProxy sees it: UP, DOWN, `UP 1/2` (going down)..."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(socket_path))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = [line.split(",") for line in data.decode().splitlines() if line]
    if not rows:
        return {}
    head = [rows[0][0].lstrip("# "), *rows[0][1:]]
    status, name = head.index("status"), head.index("svname")
    return {r[name]: r[status] for r in rows[1:] if r[0] == "gateways" and r[name] != "BACKEND"}


RETRY_SAFE_PATHS = ("/api/v1/mcp/servers/fault/tools/echo",)


def haproxy_config(
    port: int,
    nodes: Sequence[Backend],
    socket_path: Path,
    retry_safe_paths: Sequence[str] = RETRY_SAFE_PATHS,
    *,
    server_close: bool = True,
    client_close: bool = True,
) -> str:
    """HAProxy as an operator would put it in front of gateways; see docs/operations.md.

    Round robin; a node is taken out after 2 failed `GET /readyz` 500 ms apart (so within a
    second of dying or starting to drain) and back after 2 good ones. A request whose
    connection failed goes to another node (`retry-on conn-failure`): the node never saw it.
    One that reached a node and got no answer is sent again only on `retry_safe_paths` (the
    operator's list of read-only tools' URLs; `http-buffer-request` keeps the body so that
    it can be sent again): a write must not run twice, so its caller gets a 502 or, when
    the request was not the first on a kept-alive client connection, the connection closed
    without an answer (HAProxy's way of letting a client retry what it takes for a request
    the server never processed). With `client_close` (`option httpclose`), a client
    connection carries one request and that case cannot arise. With `server_close`,
    connections to nodes are not kept between requests: a request delayed on a kept-alive
    connection by a partition would otherwise meet the gateway's own idle timeout
    (`keep_alive_s`) and end without an answer.
    """
    servers = "\n".join(
        f"    server {n.name} {n.address}:{GATEWAY_PORT} check inter 500ms fall 2 rise 2"
        for n in nodes
    )
    paths = " ".join(retry_safe_paths) or "/-"  # none: an ACL that matches no request path
    return f"""\
global
    maxconn 4096
    stats socket {socket_path} mode 600 level admin
    log stderr format raw local0

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout queue 5s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend mesh
    bind 127.0.0.1:{port}
{"    option httpclose" if client_close else "    # client connections kept alive"}
    default_backend gateways

backend gateways
    balance roundrobin
{"    option http-server-close" if server_close else "    # connections to nodes kept"}
    option http-buffer-request
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    acl retry_safe path {paths}
    http-request disable-l7-retry unless retry_safe
{servers}
"""
