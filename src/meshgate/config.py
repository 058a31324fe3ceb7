"""Settings: `.mcp.json` servers, `meshgate.toml` policy, `MESHGATE_*` environment, flags.

Precedence, highest first: command line, environment, file, defaults. Loading collects every
problem it finds (file, key, reason) instead of stopping at the first, so that
``meshgate check-config`` can report them all at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from meshgate.balancer import STRATEGIES
from meshgate.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerSettings(_Model):
    failure_threshold: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(30.0, gt=0)
    minimum_calls: int = Field(20, ge=1)
    recovery_s: float = Field(60.0, gt=0)
    half_open_successes: int = Field(2, ge=1)
    half_open_max_calls: int = Field(1, ge=1)


class RetrySettings(_Model):
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_s: float = Field(0.02, ge=0)
    backoff_cap_s: float = Field(1.0, ge=0)
    budget_ratio: float = Field(0.2, ge=0, le=1)
    budget_min_per_s: float = Field(10.0, ge=0)


class HealthSettings(_Model):
    interval_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)
    healthy_after: int = Field(1, ge=1)


class RestartSettings(_Model):
    backoff_base_s: float = Field(0.1, ge=0)
    backoff_cap_s: float = Field(30.0, ge=0)
    max_failures: int = Field(5, ge=1)
    """Consecutive failed starts (or crashes before `stable_after_s`) before state `failed`."""
    stable_after_s: float = Field(30.0, ge=0)


class ServerPolicy(_Model):
    """Per-server policy; `[defaults]` in meshgate.toml sets it for every server."""

    instances: int = Field(1, ge=1, le=64)
    """Processes per server; in `dedicated` mode, the warm spares kept ready."""
    max_dedicated: int = Field(32, ge=1, le=1024)
    """`dedicated` mode: processes held by client sessions at once."""
    mode: str = "shared"
    strategy: str = "least_connections"
    call_timeout_s: float = Field(30.0, gt=0)
    startup_timeout_s: float = Field(30.0, gt=0)
    max_in_flight: int = Field(16, ge=1)
    queue_size: int = Field(256, ge=0)
    restart_wait_s: float = Field(5.0, ge=0)
    """How long a call may wait for an MCP instance that is restarting when no other instance
    is healthy (within its deadline); an HTTP service with no healthy instance answers 503 at
    once."""
    idempotent_tools: tuple[str, ...] = ()
    task_support: Literal["forbidden", "optional", "required"] = "forbidden"
    """Whether MCP clients may run this server's tools as tasks (2025-11-25 `params.task`,
    2026-07-28 tasks extension): `optional` runs a call as a task when the client can take
    one, `required` only as a task."""
    tool_task_support: dict[str, Literal["forbidden", "optional", "required"]] = Field(
        default_factory=dict
    )
    """`task_support` per tool, over the server's."""
    task_concurrency: int | None = Field(None, ge=1, le=1024)
    """Tasks with this target running at once on each node (default: only the node's
    `task_concurrency` bounds them)."""
    hash_key: str = "client_ip"
    """consistent_hash key: `client_ip`, `session` or `arg:NAME` (a tool argument)."""
    namespace: str | None = None
    """The prefix of this server's tool and prompt names in `/mcp` (default: the server's
    name; "" for none)."""
    max_line_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    stderr_lines: int = Field(200, ge=1)
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    health: HealthSettings = HealthSettings()
    restart: RestartSettings = RestartSettings()

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; expected one of {', '.join(STRATEGIES)}")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", value):
            raise ValueError("must be at most 64 of the characters MCP tool names allow")
        return value

    @field_validator("mode")
    @classmethod
    def _available_mode(cls, value: str) -> str:
        if value not in ("shared", "sticky", "dedicated"):
            raise ValueError(f"unknown mode {value!r}; expected shared, sticky or dedicated")
        return value

    @field_validator("hash_key")
    @classmethod
    def _known_hash_key(cls, value: str) -> str:
        if value not in ("client_ip", "session") and not (
            value.startswith("arg:") and len(value) > 4
        ):
            raise ValueError("expected 'client_ip', 'session' or 'arg:NAME'")
        return value


class HeadersInterceptor(_Model):
    type: Literal["headers"]
    set: dict[str, str]


class CallerInterceptor(_Model):
    type: Literal["caller"]
    header: str = "X-Meshgate-Caller"
    required: bool = False


class TraceInterceptor(_Model):
    type: Literal["trace"]


class SizeLimitInterceptor(_Model):
    type: Literal["size_limit"]
    max_request_bytes: int = Field(ge=1)


InterceptorSpec = Annotated[
    HeadersInterceptor | CallerInterceptor | TraceInterceptor | SizeLimitInterceptor,
    Field(discriminator="type"),
]


SERVICE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["http", "tcp", "mcp"] = "http"
    path: str = "/health"
    """http: the path to GET; mcp: the MCP endpoint's path (e.g. /mcp)."""
    interval_s: float = Field(5.0, ge=0.05, le=3600)
    timeout_s: float = Field(2.0, gt=0, le=60)
    unhealthy_after: int = Field(3, ge=1, le=100)
    healthy_after: int = Field(1, ge=1, le=100)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class Registration(BaseModel):
    """What a service instance registers (`POST /api/v1/mesh/v2/register`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SERVICE_NAME)
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    url: str | None = None
    address: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tags: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict[str, Any] = Field(default_factory=dict)
    weight: int = Field(1, ge=1, le=1000)
    check: Check = Field(default_factory=Check)
    ttl_s: float | None = Field(None, gt=0, le=86400)
    depends_on: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        if any(not t or len(t) > 64 for t in value):
            raise ValueError("each tag is 1 to 64 characters")
        return value

    @model_validator(mode="after")
    def _where(self) -> Registration:
        if self.url is not None:
            if self.address is not None or self.port is not None:
                raise ValueError("give either url, or address and port, not both")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be an http:// or https:// URL with a host")
        elif self.address is None or self.port is None:
            raise ValueError("give url, or address and port")
        return self

    @property
    def base_url(self) -> str:
        if self.url is not None:
            return self.url.rstrip("/")
        host = f"[{self.address}]" if self.address and ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    @property
    def instance_id(self) -> str:
        """The id the client gave, or one derived from name and URL: registering the same
        service at the same URL again is idempotent."""
        if self.id is not None:
            return self.id
        return f"{self.name}-{hashlib.sha1(self.base_url.encode()).hexdigest()[:6]}"


class MeshSettings(_Model):
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    node_id: str | None = None
    data_dir: str | None = None
    registry: str = "embedded"
    task_concurrency: int = Field(8, ge=1, le=1024)
    """Tasks this node runs at once."""
    task_lease_s: float = Field(30.0, ge=1, le=3600)
    """A running task's lease: renewed while it runs; if its node dies, it runs again after."""
    task_result_ttl_s: float = Field(7 * 86400.0, ge=1)
    """How long a final task (and its result) is kept before it is forgotten."""
    registry_lease_s: float = Field(15.0, ge=0.5, le=3600)
    """A shared registry: how long a node's entries outlive its last renewal."""
    queue: str = "embedded"
    """`embedded` (SQLite in the data dir) or `redis://...` (Redis Streams, shared by nodes)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_levels: dict[str, Literal["debug", "info", "warning", "error"]] = Field(
        default_factory=dict
    )
    """Levels of single modules over `log_level`, e.g. {"meshgate.router" = "debug"}."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """`auto`: JSON lines when stderr is not a terminal."""
    tracing: bool = True
    """OpenTelemetry spans for requests, routed calls and attempts (kept in memory for
    /traces, exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set)."""
    trace_sample_ratio: float = Field(0.01, ge=0, le=1)
    """The share of traces started here that are recorded; a sampled parent is honoured."""
    traces_kept: int = Field(200, ge=1, le=100_000)
    """Recent traces kept in memory for GET /api/v1/mesh/v2/traces."""
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    min_call_timeout_s: float = Field(0.05, gt=0, le=60)
    """The shortest deadline a caller may ask for (`timeout_s`, `X-Meshgate-Timeout`); a
    shorter one is refused with 400 rather than left to fail against a healthy instance."""
    max_hops: int = Field(8, ge=1, le=100)
    """Gateways a proxied call may pass through (`X-Meshgate-Hops`) before it is refused
    with 508: a service registered at a URL that leads back to a gateway makes a loop."""
    max_json_depth: int = Field(64, ge=1, le=500)
    """The deepest nesting of arrays and objects a REST request body may have (deeper: 400);
    bounded so that parsing and validating a body never runs out of stack."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Networks (CIDR) of proxies in front of the gateway: only from these are a client's
    `X-Forwarded-*` and `Forwarded` headers passed on and its `X-Forwarded-For` believed."""
    shutdown_grace_s: float = Field(10.0, ge=0)
    # MCP Streamable HTTP front end
    namespace_separator: str = "__"
    max_sessions: int = Field(1000, ge=1)
    session_idle_timeout_s: float = Field(1800.0, gt=0)
    allowed_origins: list[str] = Field(default_factory=list)
    interceptors: list[InterceptorSpec] = Field(default_factory=list)
    services: list[Registration] = Field(default_factory=list)
    """Static HTTP services, registered at every start ([[mesh.services]])."""

    @field_validator("services")
    @classmethod
    def _static(cls, value: list[Registration]) -> list[Registration]:
        if any(r.ttl_s is not None for r in value):
            raise ValueError("a static service has no TTL: it is not expected to heartbeat")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):  # MESHGATE_TRUSTED_PROXIES: comma-separated
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return value  # the type check reports it
        out = []
        for v in value:
            try:
                out.append(str(ipaddress.ip_network(v.strip())))
            except ValueError as e:
                raise ValueError(f"{v!r} is not an IP network (CIDR): {e}") from None
        return out

    @field_validator("namespace_separator")
    @classmethod
    def _separator(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,8}", value):
            raise ValueError(
                "must be 1 to 8 of the characters MCP tool names allow (A-Z a-z 0-9 _ - .)"
            )
        return value

    @field_validator("registry")
    @classmethod
    def _registry_backend(cls, value: str) -> str:
        if value == "embedded" or value.startswith(("redis://", "rediss://")):
            return value
        if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
            return value
        raise ValueError(
            f"backend {value!r} is not available; use embedded, sqlite:///PATH or redis://"
        )

    @field_validator("queue")
    @classmethod
    def _queue_backend(cls, value: str) -> str:
        if value == "embedded" or value.startswith(("redis://", "rediss://")):
            return value
        raise ValueError(f"backend {value!r} is not available; use embedded or redis://")


@dataclass(frozen=True)
class ServerSpec:
    """One MCP server from `.mcp.json`, with its merged policy: a stdio command, or a `url`
    of a remote server speaking Streamable HTTP."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    policy: ServerPolicy = field(default_factory=ServerPolicy)
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to start, already merged and validated."""

    mesh: MeshSettings = field(default_factory=MeshSettings)
    servers: Mapping[str, ServerSpec] = field(default_factory=dict)
    default_policy: ServerPolicy = field(default_factory=ServerPolicy)  # [defaults]
    service_policies: Mapping[str, ServerPolicy] = field(default_factory=dict)  # [services.*]
    config_path: str | None = None
    policy_path: str | None = None

    @property
    def node_id(self) -> str:
        return self.mesh.node_id or os.uname().nodename

    @property
    def data_dir(self) -> Path | None:
        """Where durable state goes: `data_dir`, else the user's state directory
        ($XDG_STATE_HOME/meshgate or ~/.local/state/meshgate); "" keeps it in memory."""
        if self.mesh.data_dir == "":
            return None
        if self.mesh.data_dir:
            return Path(self.mesh.data_dir).expanduser()
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "meshgate"

    def task_limit(self, target: str) -> int | None:
        """The per-node task concurrency of an MCP server or HTTP service, if it has one."""
        if target in self.servers:
            return self.servers[target].policy.task_concurrency
        return self.service_policies.get(target, self.default_policy).task_concurrency

    @property
    def tasks_path(self) -> Path | None:
        return self.data_dir / "tasks.sqlite3" if self.data_dir is not None else None

    @property
    def registrations_path(self) -> Path | None:
        """The SQLite file of HTTP registrations: `sqlite:///PATH` names it, else the data dir
        holds it."""
        if self.mesh.registry.startswith("sqlite:///"):
            return Path(self.mesh.registry.removeprefix("sqlite://")).expanduser()
        return self.data_dir / "registry.sqlite3" if self.data_dir is not None else None


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
    for key in sorted(set(data) - {"mesh", "defaults", "servers", "services"}):
        problems.append(
            Problem(f, key, "unknown table; expected mesh, defaults, servers or services")
        )
    tables = {k: data.get(k, {}) for k in ("mesh", "defaults", "servers", "services")}
    for key, value in tables.items():
        if not isinstance(value, dict):
            problems.append(Problem(f, key, "expected a table"))
            tables[key] = {}
    servers = {k: v for k, v in tables["servers"].items() if isinstance(v, dict)}
    services = {k: v for k, v in tables["services"].items() if isinstance(v, dict)}
    return tables["mesh"], tables["defaults"], servers, services


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
    pf = str(policy) if policy else "meshgate.toml"
    if policy:
        toml = _read_toml(Path(policy), problems)
        if toml is not None:
            mesh_raw, defaults_raw, per_server, per_service = _parse_policy(toml, pf, problems)

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
