"""The `meshgate` command: serve, services, call, tasks, keys, check-config, import,
encryption-key, reencrypt."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshgate.cli_client import (
    add_client_commands,
    add_export_command,
    call,
    default_url,
    services,
    tasks,
)

if TYPE_CHECKING:
    from meshgate.config import Settings


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshgate", description="A service mesh for MCP servers.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help="a .mcp.json file (default: ./.mcp.json if present)")
    s.add_argument("--policy", help="a meshgate.toml file (default: ./meshgate.toml if present)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--data-dir")
    s.add_argument("--registry", help="registry backend URL (embedded)")
    s.add_argument("--queue", help="queue backend URL (embedded)")
    s.add_argument("--node-id")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        help="serve on a non-loopback --host without authentication (anyone who can reach "
        "the port can call every tool)",
    )
    s.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate")
    s.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    s.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="verify client certificates against this PEM CA bundle (mutual TLS)",
    )
    s.add_argument(
        "--tls-client-cert",
        choices=["required", "optional"],
        help="with --tls-client-ca: refuse clients without a certificate (required, the "
        "default) or let them in to authenticate otherwise (optional)",
    )
    s.add_argument(
        "--kong-admin",
        metavar="URL",
        help="keep this Kong Admin API's upstreams and targets in step with the HTTP services "
        "([kong] admin_url)",
    )

    add_client_commands(sub)

    keys = sub.add_parser(
        "keys",
        help="create, list or revoke API keys",
        description="Manage API keys in the gateway's own store (the data dir's keys.sqlite3, "
        "or the Redis registry), found as `serve` finds it; no gateway needs to run.",
    )
    actions = keys.add_subparsers(dest="action", required=True)

    def key_action(name: str, help_: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_, description=help_)
        a.add_argument("--config", help="a .mcp.json file (as for serve)")
        a.add_argument("--policy", help="a meshgate.toml file (as for serve)")
        a.add_argument("--data-dir", help="where keys.sqlite3 is (as for serve)")
        a.add_argument("--registry", help="a redis:// registry keeps the keys of every gateway")
        return a

    a = key_action("create", "make a key; it is printed once")
    a.add_argument("name", help="who the key is for: the name its requests run as (unique)")
    a.add_argument(
        "--role",
        action="append",
        default=[],
        dest="roles",
        metavar="ROLE",
        help="a role the key holds: admin, or one of [roles.NAME] (repeat for more)",
    )
    a.add_argument(
        "--expires", metavar="WHEN", help="30d, 12h, 2027-01-01T00:00:00Z (default: never)"
    )
    a.add_argument("--service", metavar="NAME", help="a service's key: it registers only NAME")
    a.add_argument("--json", action="store_true", help="print JSON for scripts")
    a = key_action("list", "show every key (never a secret)")
    a.add_argument("--json", action="store_true", help="print JSON for scripts")
    a = key_action("revoke", "stop a key from working")
    a.add_argument("key_id", metavar="ID", help="the key's id, as `keys list` shows it")

    k = sub.add_parser("check-config", help="validate a .mcp.json or meshgate.toml")
    k.add_argument("files", nargs="+", metavar="FILE")
    k.add_argument("--json", action="store_true")

    i = sub.add_parser(
        "import",
        help="write the meshgate.toml equivalent of another gateway's configuration",
        description="Read Kong's declarative configuration (YAML or JSON) and write the "
        "meshgate.toml fragment: HTTP services, their instances and checks, routes, limits. "
        "What has no equivalent is listed on stderr and as comments.",
    )
    i.add_argument("kind", choices=["kong"])
    i.add_argument("file", metavar="FILE", help="kong.yml, kong.yaml or kong.json")
    i.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    add_export_command(sub)

    sub.add_parser("encryption-key", help="print a new key for encryption at rest")
    r = sub.add_parser(
        "reencrypt",
        help="seal stored tasks and registrations anew with the first encryption key",
    )
    r.add_argument("--config", help="a .mcp.json file (default: ./.mcp.json if present)")
    r.add_argument("--policy", help="a meshgate.toml file (default: ./meshgate.toml if present)")
    r.add_argument("--data-dir")
    r.add_argument("--registry", help="registry backend URL (embedded)")
    r.add_argument("--queue", help="queue backend URL (embedded)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "url", "") is None:
        args.url = default_url()
    handler = {
        "serve": _serve,
        "services": services,
        "call": call,
        "tasks": tasks,
        "keys": _keys,
        "check-config": _check_config,
        "import": _import,
        "export": _export,
        "encryption-key": _encryption_key,
        "reencrypt": _reencrypt,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _files(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(the .mcp.json, the meshgate.toml) a command loads: flag, environment, working dir."""
    config = (
        args.config
        or _env("MESHGATE_CONFIG")
        or (".mcp.json" if Path(".mcp.json").is_file() else None)
    )
    policy = (
        args.policy
        or _env("MESHGATE_POLICY")
        or ("meshgate.toml" if Path("meshgate.toml").is_file() else None)
    )
    return config, policy


def _settings(args: argparse.Namespace, overrides: dict[str, Any]) -> Settings | None:
    """The settings `serve` would run with: files from flags, the environment or the working
    directory, then `overrides`; None after printing every problem."""
    from meshgate.config import ConfigProblems, load

    config, policy = _files(args)
    try:
        return load(config, policy, overrides=overrides)
    except ConfigProblems as e:
        for p in e.problems:
            print(f"{p.severity}: {p}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from meshgate.api.listener import ListenerBounds, protocol_class
    from meshgate.app import build_app, check_storage
    from meshgate.config.settings import is_loopback_host
    from meshgate.config.tls import server_context, upstream_context
    from meshgate.errors import ConfigError
    from meshgate.observability.logging import configure

    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "registry": args.registry,
        "queue": args.queue,
        "node_id": args.node_id,
        "log_level": args.log_level,
        "insecure": args.insecure,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "tls_client_cert": args.tls_client_cert,
    }
    settings = _settings(args, overrides)
    if settings is None:
        return 2
    if args.kong_admin:
        try:
            settings = dataclasses.replace(
                settings, kong=settings.kong.with_admin_url(args.kong_admin)
            )
        except ValueError as e:
            print(f"error: --kong-admin: {e}", file=sys.stderr)
            return 2
    log_format = settings.mesh.log_format
    configure(
        settings.mesh.log_level,
        json_lines=None if log_format == "auto" else log_format == "json",
        modules=settings.mesh.log_levels,
    )
    exposed = settings.mesh.host if settings.exposed_without_auth else None
    edge_host = settings.edge.edge.host
    if edge_host and settings.edge.enabled and not settings.security.auth_enabled:
        exposed = exposed or (None if is_loopback_host(edge_host) else edge_host)
    if exposed is not None:
        if not settings.mesh.insecure:
            print(
                f"error: refusing to serve on {exposed} without authentication: "
                "anyone who can reach it could call every tool of every server.\n"
                "  Configure [auth] in the policy file (see docs/security.md and "
                "examples/secure.toml),\n"
                "  or listen on loopback only (--host 127.0.0.1),\n"
                "  or pass --insecure if something in front of meshgate authenticates callers.",
                file=sys.stderr,
            )
            return 2
        logging.getLogger("meshgate").warning(
            "serving on %s WITHOUT authentication (--insecure): anyone who can reach this "
            "port can call every tool of every server",
            exposed,
        )
    try:
        check_storage(settings)
        tls = server_context(settings.mesh)
        upstream_context(settings.mesh)  # its files' problems belong to start-up, not a call
    except ConfigError as e:
        print(f"error: {e.detail}", file=sys.stderr)
        return 2
    try:
        sock = _bind(settings.mesh.host, settings.mesh.port)
    except OSError as e:
        print(
            f"error: cannot listen on {settings.mesh.host}:{settings.mesh.port}: {e.strerror}",
            file=sys.stderr,
        )
        return 2
    bound_port = sock.getsockname()[1]
    if bound_port != settings.mesh.port:  # --port 0: the port the OS chose is the one to know
        settings = dataclasses.replace(
            settings, mesh=settings.mesh.model_copy(update={"port": bound_port})
        )
    sockets = [sock]
    labels = [""]  # what each socket serves, in its "listening" line
    edge = settings.edge.edge
    if settings.edge.enabled and edge.port is not None:
        try:
            sockets.append(_bind(edge.host or settings.mesh.host, edge.port))
        except OSError as e:
            sock.close()
            print(
                f"error: cannot listen on the edge port {edge.port}: {e.strerror}", file=sys.stderr
            )
            return 2
        labels.append("edge routes ")
        edge = edge.model_copy(update={"port": sockets[-1].getsockname()[1]})
        settings = dataclasses.replace(
            settings, edge=settings.edge.model_copy(update={"edge": edge})
        )
    consul = settings.consul
    if consul.enabled and consul.port is not None:  # [consul] port: a listener of its own
        try:
            sockets.append(_bind(settings.mesh.host, consul.port))
        except OSError as e:
            for s in sockets:
                s.close()
            print(
                f"error: cannot listen on consul.port {consul.port}: {e.strerror}", file=sys.stderr
            )
            return 2
        labels.append("Consul-compatible API ")
        settings = dataclasses.replace(
            settings, consul=consul.model_copy(update={"port": sockets[-1].getsockname()[1]})
        )
    try:
        app = build_app(settings)  # opens the databases: their problems come before "listening"
    except ConfigError as e:
        for s in sockets:
            s.close()
        print(f"error: {e.detail}", file=sys.stderr)
        return 2
    scheme = "http" if tls is None else "https"

    def url(s: socket.socket) -> str:
        host, port = s.getsockname()[:2]
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    for s, label in zip(sockets, labels, strict=True):  # the main port first: tests wait
        logging.getLogger("meshgate").info("meshgate %slistening on %s", label, url(s))
    if settings.mesh.dashboard:
        logging.getLogger("meshgate").info("the dashboard: %s/ui/", url(sockets[0]))

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.before_shutdown()
            await super().shutdown(sockets)

    server = Server(
        uvicorn.Config(
            app,
            log_config=None,
            timeout_graceful_shutdown=int(settings.mesh.shutdown_grace_s) or None,
            access_log=settings.mesh.log_level == "debug",
            # Forwarding headers are believed from `mesh.trusted_proxies` only (not uvicorn's
            # default of 127.0.0.1): the app does that itself.
            proxy_headers=False,
            # The listener's own protocol bounds connections, their heads, bodies and idle
            # time, and does the TLS handshake (uvicorn's would be unbounded for 60 s and
            # keep the client certificate from the app): uvicorn itself is given no TLS.
            http=protocol_class(ListenerBounds.of(settings.mesh), tls),
        )
    )
    # uvicorn re-raises the signal that stopped it; a no-op handler makes SIGTERM exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=sockets)
    return 0 if server.started else 1


def _bind(host: str, port: int) -> socket.socket:
    """Bind before start-up so that `--port 0` can report the port the OS chose."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def _keys(args: argparse.Namespace) -> int:
    from meshgate.cli_keys import run

    settings = _settings(args, {"data_dir": args.data_dir, "registry": args.registry})
    return 2 if settings is None else run(args, settings)


def _check_config(args: argparse.Namespace) -> int:
    from meshgate.config import check_file

    problems = [p for f in args.files for p in check_file(f)]
    errors = [p for p in problems if p.severity == "error"]
    if args.json:
        print(json.dumps({"ok": not errors, "problems": [p.__dict__ for p in problems]}, indent=2))
    else:
        for p in problems:
            print(f"{p.severity}: {p}")
        print(
            f"{len(errors)} error(s), {len(problems) - len(errors)} warning(s) "
            f"in {len(args.files)} file(s)"
        )
    return 1 if errors else 0


def _import(args: argparse.Namespace) -> int:
    from meshgate.config.kong import KongError, convert

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(
            f"error: cannot read {args.file}: {getattr(e, 'strerror', None) or e}", file=sys.stderr
        )
        return 2
    try:
        fragment = convert(text, args.file)
    except KongError as e:
        print(f"error: {e.detail}", file=sys.stderr)
        return 2
    for note in fragment.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        try:
            Path(args.output).write_text(fragment.to_toml(), encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(fragment.to_toml())
    print(
        f"{len(fragment.services)} service(s), {len(fragment.instances)} instance(s), "
        f"{len(fragment.routes)} route(s), {len(fragment.limits)} limit(s); "
        f"{len(fragment.notes)} note(s)",
        file=sys.stderr,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from meshgate.cli_client import export

    return export(args, *_files(args))


def _encryption_key(args: argparse.Namespace) -> int:
    from meshgate.crypto import generate_key

    print(generate_key())
    return 0


def _reencrypt(args: argparse.Namespace) -> int:
    """Rewrite the stored tasks (embedded or Redis) and the stored HTTP registrations with
    the first configured key; safe while gateways run (a record changed meanwhile is left as
    that change made it)."""
    import asyncio

    from meshgate.config import ConfigProblems, load
    from meshgate.crypto import Cipher
    from meshgate.errors import ConfigError, MeshgateError
    from meshgate.registry.store import RegistrationStore
    from meshgate.tasks import open_queue

    config, policy = _files(args)
    overrides = {"data_dir": args.data_dir, "registry": args.registry, "queue": args.queue}
    try:
        settings = load(config, policy, overrides=overrides)
    except ConfigProblems as e:
        for p in e.problems:
            print(f"{p.severity}: {p}", file=sys.stderr)
        return 2

    async def run() -> tuple[tuple[int, int], tuple[int, int]]:
        cipher = Cipher(settings.mesh.encryption_key_list())
        if not cipher.enabled:
            raise ConfigError(
                "no encryption key is configured (encryption_keys, MESHGATE_ENCRYPTION_KEYS "
                "or encryption_key_file)"
            )
        queue = open_queue(settings.mesh.queue, settings.tasks_path, cipher=cipher)
        try:
            tasks = await queue.reencrypt()
        finally:
            await queue.close()
        path = settings.registrations_path
        registrations = (0, 0)
        if path is not None and path.exists():
            store = RegistrationStore(path, cipher=cipher)
            try:
                registrations = store.reencrypt()
            finally:
                store.close()
        return tasks, registrations

    try:
        (t_done, t_failed), (r_done, r_failed) = asyncio.run(run())
    except MeshgateError as e:
        print(f"error: {e.detail}", file=sys.stderr)
        return 2
    print(f"tasks: {t_done} rewritten, {t_failed} not decryptable")
    print(f"registrations: {r_done} rewritten, {r_failed} not decryptable")
    return 1 if t_failed or r_failed else 0


if __name__ == "__main__":
    sys.exit(main())
