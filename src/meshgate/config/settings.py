"""The settings' shapes: policy per server and service, the mesh's own settings, static
registrations and checks, and the merged `Settings` the gateway starts from. Pydantic models
validate what files and the environment say (`config.loading` reads them)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from meshgate.balancer import STRATEGIES
from meshgate.config.consul import CONSUL_REGISTRY_HINT, ConsulSettings, is_consul_url
from meshgate.config.redis import RedisUrlError, check_redis_url, is_redis_url
from meshgate.config.routes import EdgeSettings
from meshgate.config.security import SecuritySettings
from meshgate.config.topics import TaskSettings
from meshgate.crypto import check_key, read_key_file
from meshgate.errors import ConfigError
from meshgate.urls import redact_url

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


MAX_INSTANCES = 64


class InstanceBounds(_Model):
    """How many processes a server runs: the autoscaler keeps the number from `min` to `max`
    (in `dedicated` mode, the warm spares); `min = max` is a fixed pool."""

    min: int = Field(1, ge=0, le=MAX_INSTANCES)
    max: int = Field(1, ge=1, le=MAX_INSTANCES)

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, value: Any) -> Any:
        # `{max = 4}` keeps one process at least; `{min = 3}` is a fixed pool of three.
        if isinstance(value, dict):
            value = dict(value)
            low, high = value.get("min"), value.get("max")
            if high is None and isinstance(low, int):
                value["max"] = max(low, 1)
            elif low is None and isinstance(high, int):
                value["min"] = min(1, high)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> InstanceBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def scales(self) -> bool:
        return self.min < self.max


class AutoscaleSettings(_Model):
    """When a pool with `instances = {min, max}` grows and shrinks (`upstream.autoscaler`)."""

    interval_s: float = Field(0.5, gt=0, le=60)
    """How often the pool's load is looked at."""
    scale_up_in_flight: float | None = Field(None, gt=0)
    """Calls in flight per ready instance over which the pool is busy (default: 75 % of
    `max_in_flight`)."""
    scale_up_queue_wait_s: float = Field(0.1, ge=0)
    """Calls waiting for a free instance this long without a break make the pool busy."""
    scale_up_latency_s: float | None = Field(None, gt=0)
    """The mean latency of busy instances over which the pool is busy (default: not used)."""
    scale_up_after_s: float = Field(1.0, ge=0)
    """How long the pool stays busy before it grows (and between two steps up)."""
    scale_down_after_s: float = Field(60.0, ge=0)
    """How long the load fits on fewer instances (none, for `min = 0`) before it shrinks."""


class ServerPolicy(_Model):
    """Per-server policy; `[defaults]` in meshgate.toml sets it for every server."""

    instances: InstanceBounds = InstanceBounds()
    """Processes per server: a number, or `{min, max}` for the autoscaler to choose between;
    in `dedicated` mode, the warm spares kept ready."""
    autoscale: AutoscaleSettings = AutoscaleSettings()
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
    forward_credentials: bool = False
    """HTTP services: pass the client's `Authorization` and `X-API-Key` on through the proxy
    even with `[auth]` on, when they are the gateway's own credential (which the service could
    then replay to it); without `[auth]` they always pass."""
    inherit_env: bool = False
    """Start this server's processes with the gateway's whole environment; by default they get
    their `.mcp.json` `env` over only the variables in `upstream.process.INHERITED_ENV`."""
    env_passthrough: tuple[str, ...] = ()
    """Variables of the gateway's environment passed to this server's processes besides those
    `INHERITED_ENV` lets through (a name the gateway does not have is skipped)."""
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    health: HealthSettings = HealthSettings()
    restart: RestartSettings = RestartSettings()

    @field_validator("instances", mode="before")
    @classmethod
    def _fixed_instances(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= MAX_INSTANCES:
                raise ValueError(
                    f"a fixed number of instances is 1 to {MAX_INSTANCES}; for a server that "
                    "may scale to zero give {min = 0, max = N}"
                )
            return {"min": value, "max": value}
        return value

    @model_validator(mode="after")
    def _scale_up_in_flight(self) -> ServerPolicy:
        wanted = self.autoscale.scale_up_in_flight
        if wanted is not None and wanted > self.max_in_flight:
            raise ValueError(
                f"autoscale.scale_up_in_flight ({wanted:g}) is above max_in_flight "
                f"({self.max_in_flight}): an instance never gets that busy"
            )
        return self

    @property
    def scale_up_in_flight(self) -> float:
        """Calls in flight per ready instance over which the autoscaler calls a pool busy."""
        wanted = self.autoscale.scale_up_in_flight
        return wanted if wanted is not None else 0.75 * self.max_in_flight

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

    @field_validator("env_passthrough")
    @classmethod
    def _variable_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in value if not n or "=" in n or "\0" in n]
        if bad:
            raise ValueError(f"not environment variable names: {bad!r}")
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

    type: Literal["http", "tcp", "mcp", "ttl"] = "http"
    path: str = "/health"
    """http: the path to GET; mcp: the MCP endpoint's path (e.g. /mcp)."""
    interval_s: float = Field(5.0, ge=0.05, le=3600)
    """How often the check runs; ttl (no check is run: the instance reports its own health,
    as a heartbeat or a Consul TTL update): how long a report holds before it fails."""
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


def _redis_url(value: str) -> str:
    """A Redis URL checked the way `config.redis` will read it, its error without secrets."""
    try:
        return check_redis_url(value)
    except RedisUrlError as e:
        raise ValueError(f"{redact_url(value)!r}: {e}") from None


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
