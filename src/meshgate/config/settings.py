"""The settings' shapes: the mesh's own settings (`[mesh]`), the servers of the .mcp.json,
and the merged `Settings` the gateway starts from. Policy per server and service is in
`config.policy`, registrations and checks in `config.registration`. Pydantic models validate
what files and the environment say (`config.loading` reads them)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from meshgate.config.consul import CONSUL_REGISTRY_HINT, ConsulSettings, is_consul_url
from meshgate.config.kong_sync import KongSyncSettings
from meshgate.config.policy import FrozenModel, ServerPolicy
from meshgate.config.redis import RedisUrlError, check_redis_url, is_redis_url
from meshgate.config.registration import InterceptorSpec, Registration
from meshgate.config.routes import EdgeSettings
from meshgate.config.security import SecuritySettings
from meshgate.config.topics import TaskSettings
from meshgate.crypto import check_key, read_key_file
from meshgate.errors import ConfigError
from meshgate.urls import redact_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800


def _redis_url(value: str) -> str:
    """A Redis URL checked the way `config.redis` will read it, its error without secrets."""
    try:
        return check_redis_url(value)
    except RedisUrlError as e:
        raise ValueError(f"{redact_url(value)!r}: {e}") from None


class MeshSettings(FrozenModel):
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    node_id: str | None = None
    data_dir: str | None = None
    registry: str = "embedded"
    task_concurrency: int = Field(8, ge=1, le=1024)
    """Tasks this node runs at once."""
    task_lease_s: float = Field(30.0, ge=1, le=3600)
    """A running task's lease: renewed while it runs; if its node dies, it runs again after."""
    task_result_ttl_s: float = Field(86400.0, ge=1)
    """How long a final task (and its result) is kept before it is forgotten (a day)."""
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
    registration_allowed_networks: list[str] = Field(default_factory=list)
    """Networks (CIDR) a registered service's address must be in; empty: any not denied."""
    registration_denied_networks: list[str] = Field(default_factory=list)
    """Networks (CIDR) refused to registrations, on top of those always refused (link-local,
    cloud metadata, unspecified, multicast, broadcast, the gateway's own listener)."""
    registration_allow_loopback: bool = True
    """Whether services may be registered at loopback addresses (where local agents run)."""
    registration_allow_private: bool = True
    """Whether services may be registered at private addresses (10/8, 172.16/12, fd00::/8...)."""
    registration_resolve_timeout_s: float = Field(2.0, gt=0, le=60)
    """How long resolving a registered host name may take before the registration is refused."""
    shutdown_grace_s: float = Field(10.0, ge=0)
    insecure: bool = False
    """Serve on an address other than loopback without authentication ([auth]); refused
    otherwise, and warned about at every start when set."""
    # MCP Streamable HTTP front end
    namespace_separator: str = "__"
    max_sessions: int = Field(1000, ge=1)
    session_idle_timeout_s: float = Field(1800.0, gt=0)
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] | None = None
    """Host header values (port left off) the gateway answers; None: loopback and `host`."""
    interceptors: list[InterceptorSpec] = Field(default_factory=list)
    services: list[Registration] = Field(default_factory=list)
    """Static HTTP services, registered at every start ([[mesh.services]])."""
    # TLS and connection bounds
    tls_cert: str | None = None
    """PEM certificate (chain) the gateway serves HTTPS with; with `tls_key`."""
    tls_key: str | None = None
    """PEM private key of `tls_cert`."""
    tls_client_ca: str | None = None
    """PEM CA bundle that client certificates are verified against (mutual TLS)."""
    tls_client_cert: Literal["required", "optional"] = "required"
    """With `tls_client_ca`: `required` refuses a handshake without a valid client
    certificate; `optional` lets clients without one in (to authenticate another way)."""
    max_connections: int = Field(1000, ge=1, le=1_000_000)
    """Open client connections the listener holds; one more is answered 503 and closed."""
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    """How long a request's head (request line and headers) may take to arrive, from the
    connection's start or the first byte of the next request on a kept-alive connection."""
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    """How long a request's body may take to arrive in full after its head (else 408)."""
    keep_alive_s: float = Field(5.0, gt=0, le=3600)
    """How long an idle kept-alive connection waits for its next request."""
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    """The largest request head (request line and headers) accepted (larger: 431)."""
    upstream_ca_file: str | None = None
    """PEM CA bundle for https upstreams (remote MCP servers, HTTP services); None: the
    system's trust store."""
    upstream_client_cert: str | None = None
    """PEM client certificate presented to https upstreams; with `upstream_client_key`."""
    upstream_client_key: str | None = None
    redis_ca_file: str | None = None
    """PEM CA bundle for `rediss://` registry and queue URLs."""

    @model_validator(mode="after")
    def _tls_pairs(self) -> MeshSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "tls_client_ca needs tls_cert and tls_key (client certificates "
                "are asked for in the TLS handshake)"
            )
        if (self.upstream_client_cert is None) != (self.upstream_client_key is None):
            raise ValueError(
                "upstream_client_cert and upstream_client_key go together: give both or neither"
            )
        return self

    @field_validator("services")
    @classmethod
    def _static(cls, value: list[Registration]) -> list[Registration]:
        if any(r.ttl_s is not None for r in value):
            raise ValueError("a static service has no TTL: it is not expected to heartbeat")
        return value

    @field_validator(
        "trusted_proxies",
        "registration_allowed_networks",
        "registration_denied_networks",
        mode="before",
    )
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
        if value == "embedded":
            return value
        if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
            return value
        if is_redis_url(value):
            return _redis_url(value)
        if is_consul_url(value):
            raise ValueError(f"{redact_url(value)!r}: {CONSUL_REGISTRY_HINT}")
        raise ValueError(
            f"backend {redact_url(value)!r} is not available; use embedded, sqlite:///PATH, "
            "redis:// or redis+sentinel://"
        )

    @field_validator("queue")
    @classmethod
    def _queue_backend(cls, value: str) -> str:
        if value == "embedded":
            return value
        if is_redis_url(value):
            return _redis_url(value)
        raise ValueError(
            f"backend {redact_url(value)!r} is not available; use embedded, redis:// or "
            "redis+sentinel://"
        )

    # rate limits, sessions and queue bounds
    max_sessions_per_principal: int = Field(100, ge=1)
    """MCP sessions one authenticated principal may hold (more: 429); the `local` principal of
    a gateway without authentication is bounded by `max_sessions` only."""
    session_unused_timeout_s: float = Field(30.0, gt=0)
    """How long a session that has made no request since its `initialize` is kept; such
    sessions are also the first to give way when `max_sessions` is reached."""
    max_queued_tasks: int = Field(10_000, ge=1)
    """Tasks waiting to run (queued, or waiting for a retry) in the whole queue; more: 429."""
    max_queued_tasks_per_target: int | None = Field(None, ge=1)
    """Tasks waiting to run for one target (server or service); None: only the total bound."""
    max_kept_tasks: int = Field(100_000, ge=1)
    """Final tasks (succeeded, failed, dead, cancelled) kept; beyond it the oldest go first,
    before `task_result_ttl_s` would remove them."""
    audit_tool_calls: bool | None = None
    """One audit line per tool call admitted (principal, server, tool, entry, caller); off
    keeps the audit log to authentication, denials, limits, keys and registrations. Default:
    on when `[auth]` is."""
    rate_limit_store: str | None = None
    """Where `[[limits]]` buckets are kept: `embedded` (each node counts alone) or `redis://`
    (nodes share them); default: the registry's Redis when it is on Redis, else embedded."""

    @field_validator("rate_limit_store")
    @classmethod
    def _limit_store(cls, value: str | None) -> str | None:
        if value is None or value == "embedded":
            return value
        if is_redis_url(value):
            return _redis_url(value)
        raise ValueError(
            f"store {redact_url(value)!r} is not available; use embedded, redis:// or "
            "redis+sentinel://"
        )

    # encryption at rest
    encryption_keys: list[str] = Field(default_factory=list, repr=False)
    """Keys that encrypt task data and secret registration metadata at rest: the first
    encrypts, every one decrypts (add a new key first to rotate). Comma-separated in
    MESHGATE_ENCRYPTION_KEYS; `meshgate encryption-key` prints a new one."""
    encryption_key_file: str | None = None
    """A file of keys, one a line (first encrypts), read at start; used after `encryption_keys`."""

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        if isinstance(value, str):  # MESHGATE_ENCRYPTION_KEYS: comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for n, key in enumerate(value, 1):
                if isinstance(key, str):
                    try:
                        check_key(key, f"key {n}")
                    except ConfigError as e:
                        raise ValueError(e.detail) from None
        return value

    # cluster: membership and forwarding between nodes that share a Redis registry
    advertise_url: str | None = None
    """The URL other nodes reach this one at (`http://10.0.0.5:8800`); default: from `host`
    and `port` when `host` is one address. Required with a Redis registry when `host` is
    0.0.0.0 or ::."""
    cluster_secret: str | None = Field(None, repr=False)
    """The secret nodes sign their requests to each other with (HMAC-SHA256); the same on
    every node. Required with `[auth]` and a Redis registry. MESHGATE_CLUSTER_SECRET."""

    @field_validator("advertise_url")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.fullmatch(r"https?://[^/\s?#]+/?", value):
            raise ValueError("must be an http:// or https:// URL with a host and no path")
        return value.rstrip("/")

    @field_validator("cluster_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    # the dashboard
    dashboard: bool = True
    """Serve the dashboard at `/ui` (static files; its data comes from the API with the
    signed-in person's credential). MESHGATE_DASHBOARD."""

    def encryption_key_list(self) -> list[str]:
        """Every configured key, `encryption_keys` first, then those of the key file;
        ConfigError when the file cannot be read or holds a malformed key."""
        keys = list(self.encryption_keys)
        if self.encryption_key_file:
            from_file = read_key_file(self.encryption_key_file)
            for n, key in enumerate(from_file, 1):
                check_key(key, f"key {n} of {self.encryption_key_file}")
            keys += from_file
        return keys


def is_loopback_host(host: str) -> bool:
    """Whether a listen address reaches this machine only (`localhost`, 127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: where it resolves to may change; taken as exposed


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
    security: SecuritySettings = field(default_factory=SecuritySettings)  # [auth], [roles.*]...
    edge: EdgeSettings = field(default_factory=EdgeSettings)  # [[routes]], [edge]
    tasks: TaskSettings = field(default_factory=TaskSettings)  # [tasks.topics.*]
    consul: ConsulSettings = field(default_factory=ConsulSettings)  # [consul]
    kong: KongSyncSettings = field(default_factory=KongSyncSettings)  # [kong]
    config_path: str | None = None
    policy_path: str | None = None

    @property
    def rate_limit_store(self) -> str:
        """Where rate-limit buckets live (`rate_limit_store`, else the registry's Redis)."""
        if self.mesh.rate_limit_store is not None:
            return self.mesh.rate_limit_store
        registry = self.mesh.registry
        return registry if is_redis_url(registry) else "embedded"

    @property
    def exposed_without_auth(self) -> bool:
        """Whether the gateway would listen beyond this machine with no authentication."""
        return not self.security.auth_enabled and not is_loopback_host(self.mesh.host)

    @property
    def node_id(self) -> str:
        return self.mesh.node_id or os.uname().nodename

    @property
    def shared_registry(self) -> bool:
        """Whether several nodes may share this node's registry (a Redis one)."""
        return self.mesh.registry.startswith(("redis://", "rediss://"))

    def advertise_url(self) -> str:
        """The URL peers reach this node at; ConfigError when it cannot be known."""
        if self.mesh.advertise_url is not None:
            return self.mesh.advertise_url
        host = self.mesh.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            if self.shared_registry:
                raise ConfigError(
                    f"host is {host or 'every address'} and the registry is shared: set "
                    "advertise_url (MESHGATE_ADVERTISE_URL) to the URL other nodes reach this "
                    "one at"
                )
            host = "127.0.0.1"
        scheme = "https" if self.mesh.tls_cert else "http"
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{scheme}://{shown}:{self.mesh.port}"

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
