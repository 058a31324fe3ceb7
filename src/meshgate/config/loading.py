"""Loading the settings: `.mcp.json` servers, `meshgate.toml` policy, `MESHGATE_*` environment,
flags.

Precedence, highest first: command line, environment, file, defaults. Loading collects every
problem it finds (file, key, reason) instead of stopping at the first, so that
``meshgate check-config`` can report them all at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ValidationError,
)

from meshgate.config.consul import ConsulSettings
from meshgate.config.kong_sync import KongSyncSettings
from meshgate.config.policy import ServerPolicy
from meshgate.config.routes import EdgeSettings
from meshgate.config.security import SecuritySettings
from meshgate.config.settings import MeshSettings, ServerSpec, Settings
from meshgate.config.topics import TaskSettings
from meshgate.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file."""

    file: str
    key: str
    reason: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.key or '(top)'}: {self.reason}"


class ConfigProblems(ConfigError):
    """Raised when configuration has errors; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        errors = [p for p in problems if p.severity == "error"]
        super().__init__(
            "; ".join(str(p) for p in errors),
            extra={"problems": [p.__dict__ for p in errors]},
        )
        self.problems = problems


# `${VAR}` and `${VAR:-default}`, as Claude Code expands them in .mcp.json.
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KNOWN_SERVER_KEYS = {"command", "args", "env", "cwd", "type", "url", "headers", "disabled"}


def _expand(value: str, environ: Mapping[str, str], problems: list[Problem], f: str, k: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(Problem(f, k, f"environment variable {name} is not set and has no default"))
        return ""

    return _VAR.sub(sub, value)


def _read_json(path: Path, problems: list[Problem]) -> Any:
    f = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problems.append(Problem(f, "", f"cannot read file: {e.strerror or e}"))
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(
            Problem(f, "", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")
        )
        return None


def _read_toml(path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    f = str(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as e:
        problems.append(Problem(f, "", f"cannot read file: {e.strerror or e}"))
    except tomllib.TOMLDecodeError as e:
        problems.append(Problem(f, "", f"invalid TOML: {e}"))
    return None


def _pydantic_problems(f: str, prefix: str, err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        key = (
            ".".join([prefix, *(str(p) for p in e["loc"])])
            if prefix
            else ".".join(str(p) for p in e["loc"])
        )
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(Problem(f, key, msg))
    return out


@dataclass
class _RawServer:
    name: str
    command: str | None
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None
    url: str | None
    headers: dict[str, str] = field(default_factory=dict)


def _parse_mcp_json(
    data: Any, f: str, environ: Mapping[str, str], problems: list[Problem]
) -> list[_RawServer]:
    if not isinstance(data, dict):
        problems.append(Problem(f, "", "expected a JSON object with an 'mcpServers' object"))
        return []
    servers = data.get("mcpServers")
    if servers is None:
        problems.append(Problem(f, "mcpServers", "missing; expected an object of servers"))
        return []
    if not isinstance(servers, dict):
        problems.append(Problem(f, "mcpServers", "expected an object mapping names to servers"))
        return []
    out: list[_RawServer] = []
    for name, entry in servers.items():
        k = f"mcpServers.{name}"
        if not _SERVER_NAME.match(name):
            problems.append(
                Problem(f, k, "server name must be 1-64 letters, digits, '_', '-' or '.'")
            )
            continue
        if not isinstance(entry, dict):
            problems.append(Problem(f, k, "expected an object with 'command' or 'url'"))
            continue
        if entry.get("disabled") is True:
            continue
        for extra in sorted(set(entry) - _KNOWN_SERVER_KEYS):
            problems.append(Problem(f, f"{k}.{extra}", "unknown key, ignored", "warning"))
        out.append(_parse_server(name, entry, k, f, environ, problems))
    return [s for s in out if s.command or s.url]


def _parse_server(
    name: str,
    entry: dict[str, Any],
    k: str,
    f: str,
    environ: Mapping[str, str],
    problems: list[Problem],
) -> _RawServer:
    raw = _RawServer(name, None, (), {}, None, None)
    url, command = entry.get("url"), entry.get("command")
    if url is not None:
        kind = entry.get("type", "http")
        if kind == "sse":
            problems.append(
                Problem(
                    f,
                    f"{k}.type",
                    "remote servers over the HTTP+SSE transport are not supported as upstreams; "
                    "this entry is skipped (use the server's Streamable HTTP endpoint)",
                    "warning",
                )
            )
            return raw
        if kind not in ("http", "streamable-http", "streamableHttp"):
            problems.append(Problem(f, f"{k}.type", f"unknown type {kind!r}; expected http"))
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems.append(Problem(f, f"{k}.url", "expected an http:// or https:// URL"))
        else:
            raw.url = _expand(url, environ, problems, f, f"{k}.url")
        headers = entry.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            problems.append(Problem(f, f"{k}.headers", "expected an object of string values"))
        else:
            raw.headers = {
                hk: _expand(hv, environ, problems, f, f"{k}.headers.{hk}")
                for hk, hv in headers.items()
            }
        return raw
    if not isinstance(command, str) or not command.strip():
        problems.append(Problem(f, f"{k}.command", "missing; a stdio server needs a command"))
        return raw
    raw.command = _expand(command, environ, problems, f, f"{k}.command")
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        problems.append(Problem(f, f"{k}.args", "expected a list of strings"))
    else:
        raw.args = tuple(_expand(a, environ, problems, f, f"{k}.args") for a in args)
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append(Problem(f, f"{k}.env", "expected an object of string values"))
    else:
        raw.env = {ek: _expand(ev, environ, problems, f, f"{k}.env.{ek}") for ek, ev in env.items()}
    cwd = entry.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str):
            problems.append(Problem(f, f"{k}.cwd", "expected a string"))
        else:
            raw.cwd = _expand(cwd, environ, problems, f, f"{k}.cwd")
            if not Path(raw.cwd).is_dir():
                problems.append(Problem(f, f"{k}.cwd", f"directory {raw.cwd!r} does not exist"))
    if (
        raw.command
        and find_command(raw.command, raw.env.get("PATH") or environ.get("PATH")) is None
    ):
        problems.append(
            Problem(
                f,
                f"{k}.command",
                f"{raw.command!r} is not found on PATH nor in {os.path.dirname(sys.executable)}",
            )
        )
    return raw


def find_command(command: str, path: str | None) -> str | None:
    """The executable a server's `command` names: itself when it has a '/', else the first on
    `path` (a PATH value; None: this process's), else the one next to the gateway's own Python,
    so that the commands of meshgate's environment (a venv's `mcp-server-time`, `uvx`, `python`)
    are found when that environment is not activated."""
    return shutil.which(command, path=path) or shutil.which(
        command, path=os.path.dirname(sys.executable)
    )


def _parse_policy(
    data: dict[str, Any], f: str, problems: list[Problem]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Split meshgate.toml into mesh settings, default policy, and the policy tables of MCP
    servers (`[servers.NAME]`) and of HTTP services (`[services.NAME]`)."""
    known = {
        *("mesh", "defaults", "servers", "services", "tasks", "consul", "kong"),
        *_SECURITY,
        *_EDGE,
    }
    for key in sorted(set(data) - known):
        problems.append(
            Problem(
                f,
                key,
                "unknown table; expected mesh, defaults, servers, services, tasks, auth, "
                "roles, limits, routes, edge, consul or kong",
            )
        )
    tables = {k: data.get(k, {}) for k in ("mesh", "defaults", "servers", "services")}
    for key, value in tables.items():
        if not isinstance(value, dict):
            problems.append(Problem(f, key, "expected a table"))
            tables[key] = {}
    servers = {k: v for k, v in tables["servers"].items() if isinstance(v, dict)}
    services = {k: v for k, v in tables["services"].items() if isinstance(v, dict)}
    return tables["mesh"], tables["defaults"], servers, services


_SECURITY = ("auth", "roles", "limits")


def _parse_security(data: dict[str, Any], f: str, problems: list[Problem]) -> SecuritySettings:
    """`[auth]`, `[roles.NAME]` and `[[limits]]`, validated together."""
    raw = {k: data[k] for k in _SECURITY if k in data}
    try:
        return SecuritySettings(**raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(f, "", e))
        return SecuritySettings()


_EDGE = ("routes", "edge")


def _parse_edge(
    data: dict[str, Any], f: str, static: set[str], problems: list[Problem]
) -> EdgeSettings:
    """`[[routes]]` and `[edge]`; a route to a service neither `[[mesh.services]]` nor a
    `[services.NAME]` table names is a warning (it may register at run time)."""
    raw = {k: data[k] for k in _EDGE if k in data}
    try:
        edge = EdgeSettings(**raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(f, "", e))
        return EdgeSettings()
    for n, route in enumerate(edge.routes):
        if route.service not in static:
            problems.append(
                Problem(
                    f,
                    f"routes.{n}.service",
                    f"no [[mesh.services]] entry or [services.{route.service}] table names "
                    f"{route.service!r}; its requests answer 404 until it registers",
                    "warning",
                )
            )
    return edge


def _parse_tasks(
    data: dict[str, Any], f: str, servers: set[str], problems: list[Problem]
) -> TaskSettings:
    """`[tasks.topics.NAME]`; a topic naming an MCP server the .mcp.json lacks is an error."""
    raw = data.get("tasks", {})
    if not isinstance(raw, dict):
        problems.append(Problem(f, "tasks", "expected a table"))
        return TaskSettings()
    try:
        tasks = TaskSettings(**raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(f, "tasks", e))
        return TaskSettings()
    for name, topic in sorted(tasks.topics.items()):
        if topic.server is not None and topic.server not in servers:
            problems.append(
                Problem(f, f"tasks.topics.{name}.server", "no server of this name in the .mcp.json")
            )
    return tasks


def _parse_consul(data: dict[str, Any], f: str, problems: list[Problem]) -> ConsulSettings:
    """`[consul]`: the Consul-compatible API."""
    raw = data.get("consul", {})
    if not isinstance(raw, dict):
        problems.append(Problem(f, "consul", "expected a table"))
        return ConsulSettings()
    try:
        return ConsulSettings(**raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(f, "consul", e))
        return ConsulSettings()


def _parse_kong(data: dict[str, Any], f: str, problems: list[Problem]) -> KongSyncSettings:
    """`[kong]`: keeping a running Kong in step."""
    raw = data.get("kong", {})
    if not isinstance(raw, dict):
        problems.append(Problem(f, "kong", "expected a table"))
        return KongSyncSettings()
    try:
        return KongSyncSettings(**raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(f, "kong", e))
        return KongSyncSettings()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


_ENV_FIELDS = {
    "host": "MESHGATE_HOST",
    "port": "MESHGATE_PORT",
    "node_id": "MESHGATE_NODE_ID",
    "data_dir": "MESHGATE_DATA_DIR",
    "registry": "MESHGATE_REGISTRY",
    "registry_lease_s": "MESHGATE_REGISTRY_LEASE_S",
    "task_concurrency": "MESHGATE_TASK_CONCURRENCY",
    "task_lease_s": "MESHGATE_TASK_LEASE_S",
    "task_result_ttl_s": "MESHGATE_TASK_RESULT_TTL_S",
    "queue": "MESHGATE_QUEUE",
    "log_level": "MESHGATE_LOG_LEVEL",
    "log_format": "MESHGATE_LOG_FORMAT",
    "tracing": "MESHGATE_TRACING",
    "dashboard": "MESHGATE_DASHBOARD",
    "trace_sample_ratio": "MESHGATE_TRACE_SAMPLE_RATIO",
    "max_body_bytes": "MESHGATE_MAX_BODY_BYTES",
    "min_call_timeout_s": "MESHGATE_MIN_CALL_TIMEOUT_S",
    "max_hops": "MESHGATE_MAX_HOPS",
    "max_json_depth": "MESHGATE_MAX_JSON_DEPTH",
    "trusted_proxies": "MESHGATE_TRUSTED_PROXIES",
    "namespace_separator": "MESHGATE_NAMESPACE_SEPARATOR",
    "max_sessions": "MESHGATE_MAX_SESSIONS",
    "session_idle_timeout_s": "MESHGATE_SESSION_IDLE_TIMEOUT_S",
    "shutdown_grace_s": "MESHGATE_SHUTDOWN_GRACE_S",
    "insecure": "MESHGATE_INSECURE",
    "rate_limit_store": "MESHGATE_RATE_LIMIT_STORE",
    "audit_tool_calls": "MESHGATE_AUDIT_TOOL_CALLS",
    "max_sessions_per_principal": "MESHGATE_MAX_SESSIONS_PER_PRINCIPAL",
    "session_unused_timeout_s": "MESHGATE_SESSION_UNUSED_TIMEOUT_S",
    "max_queued_tasks": "MESHGATE_MAX_QUEUED_TASKS",
    "max_queued_tasks_per_target": "MESHGATE_MAX_QUEUED_TASKS_PER_TARGET",
    "max_kept_tasks": "MESHGATE_MAX_KEPT_TASKS",
    # TLS and connection bounds
    "tls_cert": "MESHGATE_TLS_CERT",
    "tls_key": "MESHGATE_TLS_KEY",
    "tls_client_ca": "MESHGATE_TLS_CLIENT_CA",
    "tls_client_cert": "MESHGATE_TLS_CLIENT_CERT",
    "max_connections": "MESHGATE_MAX_CONNECTIONS",
    "header_timeout_s": "MESHGATE_HEADER_TIMEOUT_S",
    "body_timeout_s": "MESHGATE_BODY_TIMEOUT_S",
    "keep_alive_s": "MESHGATE_KEEP_ALIVE_S",
    "max_header_bytes": "MESHGATE_MAX_HEADER_BYTES",
    "upstream_ca_file": "MESHGATE_UPSTREAM_CA_FILE",
    "upstream_client_cert": "MESHGATE_UPSTREAM_CLIENT_CERT",
    "upstream_client_key": "MESHGATE_UPSTREAM_CLIENT_KEY",
    "redis_ca_file": "MESHGATE_REDIS_CA_FILE",
    "encryption_keys": "MESHGATE_ENCRYPTION_KEYS",
    "encryption_key_file": "MESHGATE_ENCRYPTION_KEY_FILE",
    "advertise_url": "MESHGATE_ADVERTISE_URL",
    "cluster_secret": "MESHGATE_CLUSTER_SECRET",
}


def collect(
    config: str | os.PathLike[str] | None = None,
    policy: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_commands: bool = True,
) -> tuple[Settings | None, list[Problem]]:
    """Load and merge everything; return the settings (None on errors) and every problem."""
    environ = os.environ if environ is None else environ
    problems: list[Problem] = []
    config = config or environ.get("MESHGATE_CONFIG")
    policy = policy or environ.get("MESHGATE_POLICY")

    raw_servers: list[_RawServer] = []
    if config:
        data = _read_json(Path(config), problems)
        if data is not None:
            raw_servers = _parse_mcp_json(data, str(config), environ, problems)
    if not check_commands:
        problems = [p for p in problems if "not found on PATH" not in p.reason]

    mesh_raw: dict[str, Any] = {}
    defaults_raw: dict[str, Any] = {}
    per_server: dict[str, dict[str, Any]] = {}
    per_service: dict[str, dict[str, Any]] = {}
    security = SecuritySettings()
    edge = EdgeSettings()
    tasks = TaskSettings()
    consul = ConsulSettings()
    kong = KongSyncSettings()
    pf = str(policy) if policy else "meshgate.toml"
    if policy:
        toml = _read_toml(Path(policy), problems)
        if toml is not None:
            mesh_raw, defaults_raw, per_server, per_service = _parse_policy(toml, pf, problems)
            security = _parse_security(toml, pf, problems)
            static = {
                str(r.get("name")) for r in (mesh_raw.get("services") or []) if isinstance(r, dict)
            }
            edge = _parse_edge(toml, pf, static | set(per_service), problems)
            tasks = _parse_tasks(toml, pf, {s.name for s in raw_servers}, problems)
            consul = _parse_consul(toml, pf, problems)
            kong = _parse_kong(toml, pf, problems)
    kong = kong.with_environment(environ)

    env_mesh = {k: environ[v] for k, v in _ENV_FIELDS.items() if environ.get(v)}
    cli_mesh = {k: v for k, v in (overrides or {}).items() if v is not None}
    mesh: MeshSettings = field(default_factory=MeshSettings)
    try:
        mesh = MeshSettings(**{**mesh_raw, **env_mesh, **cli_mesh})
    except ValidationError as e:
        for p in _pydantic_problems(pf, "mesh", e):
            source = (
                "command line"
                if p.key.split(".")[-1] in cli_mesh
                else (
                    "environment " + _ENV_FIELDS[p.key.split(".")[-1]]
                    if p.key.split(".")[-1] in env_mesh
                    else pf
                )
            )
            problems.append(Problem(source, p.key, p.reason))

    try:
        ServerPolicy(**defaults_raw)
    except ValidationError as e:
        problems.extend(_pydantic_problems(pf, "defaults", e))
        defaults_raw = {}

    names = {s.name for s in raw_servers}
    for name in sorted(set(per_server) - names):
        problems.append(Problem(pf, f"servers.{name}", "no server of this name in the .mcp.json"))

    specs: dict[str, ServerSpec] = {}
    for raw in raw_servers:
        try:
            pol = ServerPolicy(**_deep_merge(defaults_raw, per_server.get(raw.name, {})))
        except ValidationError as e:
            problems.extend(_pydantic_problems(pf, f"servers.{raw.name}", e))
            continue
        if raw.url:
            specs[raw.name] = ServerSpec(raw.name, "", policy=pol, url=raw.url, headers=raw.headers)
            continue
        assert raw.command is not None
        specs[raw.name] = ServerSpec(raw.name, raw.command, raw.args, raw.env, raw.cwd, pol)

    service_policies: dict[str, ServerPolicy] = {}
    for name, table in per_service.items():
        try:
            service_policies[name] = ServerPolicy(**_deep_merge(defaults_raw, table))
        except ValidationError as e:
            problems.extend(_pydantic_problems(pf, f"services.{name}", e))

    if any(p.severity == "error" for p in problems):
        return None, problems
    return (
        Settings(
            mesh=mesh,
            servers=specs,
            default_policy=ServerPolicy(**defaults_raw),
            service_policies=service_policies,
            security=security,
            edge=edge,
            tasks=tasks,
            consul=consul,
            kong=kong,
            config_path=str(config) if config else None,
            policy_path=str(policy) if policy else None,
        ),
        problems,
    )


def load(
    config: str | os.PathLike[str] | None = None,
    policy: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings or raise ConfigProblems listing every error."""
    settings, problems = collect(config, policy, overrides=overrides, environ=environ)
    if settings is None:
        raise ConfigProblems(problems)
    return settings


def check_file(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem in one file: a `.mcp.json` (JSON) or a `meshgate.toml` (TOML)."""
    p = Path(path)
    if p.suffix == ".toml":
        _, problems = collect(None, p, environ={**os.environ, "MESHGATE_CONFIG": ""})
        # Per-server tables cannot be matched to servers without a .mcp.json.
        return [q for q in problems if "no server of this name" not in q.reason]
    _, problems = collect(p, None, environ={**os.environ, "MESHGATE_POLICY": ""})
    return problems
