"""The client commands of `meshgate`: services, call and tasks, which talk to a running
gateway over its HTTP API (`--url`), with an API key or token when it asks for one
(`--api-key`, `MESHGATE_API_KEY`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8800"
API = "/api/v1/mesh/v2"


def add_client_commands(sub: Any) -> None:
    """The `services`, `call` and `tasks` subcommands of the `meshgate` parser."""

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = sub.add_parser(name, help=help_)
        c.add_argument(
            "--url",
            help=f"gateway URL (default: MESHGATE_URL, else http://MESHGATE_HOST:MESHGATE_PORT, "
            f"else {DEFAULT_URL})",
        )
        c.add_argument(
            "--api-key",
            metavar="KEY",
            help="an API key or bearer token for a gateway with [auth] (default: "
            "MESHGATE_API_KEY); prefer the variable: a flag shows in the process list",
        )
        c.add_argument("--json", action="store_true", help="print JSON for scripts")
        return c

    client("services", "list MCP servers and their instances")
    c = client("call", "call a tool of an MCP server")
    c.add_argument("server")
    c.add_argument("tool")
    c.add_argument("--args", default="{}", help="the tool's arguments as a JSON object")
    c.add_argument("--timeout", type=float, help="deadline in seconds")

    t = client("tasks", "list, show, cancel or retry tasks of the queue")
    t.add_argument("action", nargs="?", default="list", choices=["list", "show", "cancel", "retry"])
    t.add_argument("task_id", nargs="?")
    t.add_argument("--status", help="list: only tasks in this state")
    t.add_argument("--limit", type=int, default=50)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def default_url() -> str:
    """The gateway a client command talks to without --url: MESHGATE_URL, else the address
    `meshgate serve` listens on by the same environment (MESHGATE_HOST, MESHGATE_PORT)."""
    url = _env("MESHGATE_URL")
    if url:
        return url
    host = (_env("MESHGATE_HOST") or "127.0.0.1").strip("[]")
    port = _env("MESHGATE_PORT") or "8800"
    if not port.isdigit() or not 0 < int(port) < 65536:
        print(f"error: MESHGATE_PORT={port!r} is not a port number", file=sys.stderr)
        raise SystemExit(2)
    # A gateway listening on every address is reached on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _request(
    args: argparse.Namespace, method: str, path: str, body: Any = None, timeout: float = 60.0
) -> tuple[int, Any]:
    import httpx

    key = args.api_key or _env("MESHGATE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(
            method, args.url.rstrip("/") + path, json=body, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as e:
        print(f"error: cannot reach the gateway at {args.url}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"detail": r.text}


def _fail(args: argparse.Namespace, status: int, body: Any) -> int:
    if isinstance(body, dict):
        print(f"error {status}: {body.get('title', '')}: {body.get('detail', '')}", file=sys.stderr)
    else:
        print(f"error {status}: {body}", file=sys.stderr)
    if status == 401 and not (args.api_key or _env("MESHGATE_API_KEY")):
        print(
            "hint: this gateway wants a credential: set MESHGATE_API_KEY (a key from "
            "`meshgate keys create`, or a bearer token)",
            file=sys.stderr,
        )
    return 1


def _table(rows: Sequence[Sequence[str]]) -> None:
    """Rows as aligned columns, the first row the heading."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def services(args: argparse.Namespace) -> int:
    status, body = _request(args, "GET", "/api/v1/mcp/servers")
    if status != 200:
        return _fail(args, status, body)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    rows = [("SERVER", "STATE", "INSTANCES", "TOOLS")]
    for s in body["items"]:
        healthy = sum(1 for i in s["instances"] if i["state"] == "healthy")
        rows.append(
            (
                s["name"],
                s["state"],
                f"{healthy}/{len(s['instances'])} healthy",
                str(len(s["tools"])),
            )
        )
    _table(rows)
    for s in body["items"]:
        for i in s["instances"]:
            extra = f"  ({i['last_error']})" if i.get("last_error") else ""
            print(
                f"  {i['id']:<24} {i['state']:<10} pid={i['pid']} breaker={i['breaker']} "
                f"in_flight={i['in_flight']} restarts={i['restarts']}{extra}"
            )
    return 0


def call(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.args)
    except ValueError as e:
        print(f"error: --args is not valid JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("error: --args must be a JSON object", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"arguments": arguments}
    if args.timeout:
        body["timeout_s"] = args.timeout
    status, result = _request(
        args,
        "POST",
        f"/api/v1/mcp/servers/{args.server}/tools/{args.tool}",
        body,
        timeout=(args.timeout or 60.0) + 5,
    )
    if status != 200:
        return _fail(args, status, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for item in result.get("content", []):
            print(item.get("text") if item.get("type") == "text" else json.dumps(item))
        if "structuredContent" in result and not result.get("content"):
            print(json.dumps(result["structuredContent"], indent=2))
    return 1 if result.get("isError") else 0


def tasks(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.task_id:
        print(f"error: tasks {args.action} needs a TASK_ID", file=sys.stderr)
        return 2
    if args.action == "list":
        query = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
        status, body = _request(args, "GET", f"{API}/tasks{query}")
    elif args.action == "show":
        status, body = _request(args, "GET", f"{API}/task/{args.task_id}")
    elif args.action == "cancel":
        status, body = _request(args, "DELETE", f"{API}/task/{args.task_id}")
    else:
        status, body = _request(args, "POST", f"{API}/task/{args.task_id}/retry")
    if status not in (200, 202):
        return _fail(args, status, body)
    if args.json or args.action == "show":
        print(json.dumps(body, indent=2))
        return 0
    items = body["items"] if args.action == "list" else [body]
    rows = [("TASK", "STATUS", "ATTEMPTS", "TARGET", "CREATED")]
    for task in items:
        target = task["target"]
        name = (
            f"{target['server']}/{target['tool']}"
            if "server" in target
            else f"{target['service']} {target.get('method', 'POST')} {target.get('path', '/')}"
        )
        rows.append(
            (task["id"], task["status"], str(task["attempts"]), name, task["created_at"] or "")
        )
    _table(rows)
    return 0


def add_export_command(sub: Any) -> None:
    """The `export` subcommand: meshgate as another gateway's configuration."""
    e: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="write another gateway's configuration that routes through meshgate",
        description="Write Kong's declarative configuration (_format_version 3.0): a Kong "
        "service and route per HTTP service (/NAME) and MCP server (/mcp/NAME), sent to an "
        "upstream of meshgate's gateway nodes checked on /readyz. With --url, the services, "
        "servers and nodes of that running gateway; else those of the configuration.",
    )
    e.add_argument("kind", choices=["kong"])
    e.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    e.add_argument(
        "--url",
        default="",
        help="a running gateway: export its services, servers and cluster nodes",
    )
    e.add_argument(
        "--api-key",
        metavar="KEY",
        help="an API key or bearer token for --url (default: MESHGATE_API_KEY)",
    )
    e.add_argument("--config", help="a .mcp.json file (as for serve)")
    e.add_argument("--policy", help="a meshgate.toml file (as for serve)")


def _listed(args: argparse.Namespace, path: str) -> list[dict[str, Any]]:
    """Every item of a paged listing of the gateway at --url; SystemExit(1) on an error."""
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        sep = "&" if "?" in path else "?"
        status, body = _request(args, "GET", path + (f"{sep}cursor={cursor}" if cursor else ""))
        if status != 200 or not isinstance(body, dict):
            raise SystemExit(_fail(args, status, body))
        items.extend(i for i in body.get("items") or [] if isinstance(i, dict))
        cursor = body.get("next_cursor") or ""
        if not cursor:
            return items


def export(args: argparse.Namespace, config: str | None, policy: str | None) -> int:
    """`meshgate export kong`: with --url, the services and servers the gateway knows behind
    its cluster's nodes; else those of the configuration files behind the address `serve`
    would advertise."""
    from pathlib import Path

    from meshgate.config import collect
    from meshgate.config.kong_export import ExportError
    from meshgate.config.kong_export import export as to_kong
    from meshgate.errors import ConfigError

    services: set[str] = set()
    servers: set[str] = set()
    if args.url:
        for item in _listed(args, f"{API}/services?limit=1000"):
            (servers if item.get("kind") == "mcp" else services).add(str(item.get("name")))
        # Every node with a record, reachable from this one or not: Kong checks each itself.
        nodes = [str(n["url"]) for n in _listed(args, f"{API}/nodes") if n.get("url")]
        nodes = nodes or [args.url]  # a gateway without a cluster is its own one node
    else:
        # Commands need not exist here: only the servers' names are exported.
        settings, problems = collect(config, policy, check_commands=False)
        if settings is None:
            for p in problems:
                print(f"{p.severity}: {p}", file=sys.stderr)
            return 2
        try:
            nodes = [settings.advertise_url()]
        except ConfigError as e:
            print(f"error: {e.detail}", file=sys.stderr)
            return 2
        services = {r.name for r in settings.mesh.services} | set(settings.service_policies)
        servers = set(settings.servers)
    try:
        text = to_kong(services, servers, nodes)
    except ExportError as e:
        print(f"error: {e.detail}", file=sys.stderr)
        return 2
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    for url in nodes:
        host = url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if host in ("127.0.0.1", "::1", "localhost"):
            print(
                f"note: node {url} is on loopback: Kong reaches it only on the same machine "
                "(set advertise_url to the address Kong reaches meshgate at)",
                file=sys.stderr,
            )
    print(
        f"{len(services)} service(s), {len(servers)} MCP server(s), {len(nodes)} node(s)",
        file=sys.stderr,
    )
    return 0
