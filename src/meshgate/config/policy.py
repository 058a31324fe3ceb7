"""Policy per MCP server and HTTP service: timeouts, retries, breaker, health probes,
restarts, instance bounds and autoscaling, balancing (`[defaults]`, `[servers.NAME]`,
`[services.NAME]`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshgate.balancer import STRATEGIES


class FrozenModel(BaseModel):
    """Settings read once: unknown keys refused, values never changed after."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerSettings(FrozenModel):
    failure_threshold: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(30.0, gt=0)
    minimum_calls: int = Field(20, ge=1)
    recovery_s: float = Field(60.0, gt=0)
    half_open_successes: int = Field(2, ge=1)
    half_open_max_calls: int = Field(1, ge=1)


class RetrySettings(FrozenModel):
    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_s: float = Field(0.02, ge=0)
    backoff_cap_s: float = Field(1.0, ge=0)
    budget_ratio: float = Field(0.2, ge=0, le=1)
    budget_min_per_s: float = Field(10.0, ge=0)


class HealthSettings(FrozenModel):
    interval_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)
    healthy_after: int = Field(1, ge=1)


class RestartSettings(FrozenModel):
    backoff_base_s: float = Field(0.1, ge=0)
    backoff_cap_s: float = Field(30.0, ge=0)
    max_failures: int = Field(5, ge=1)
    """Consecutive failed starts (or crashes before `stable_after_s`) before state `failed`."""
    stable_after_s: float = Field(30.0, ge=0)


MAX_INSTANCES = 64


class InstanceBounds(FrozenModel):
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


class AutoscaleSettings(FrozenModel):
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


class ServerPolicy(FrozenModel):
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
