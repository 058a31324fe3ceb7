"""Prometheus metrics: what is called, how fast, what fails, and the state of the mesh.

Counters and histograms are recorded where things happen (the router, the supervisor, the
service checks, the task workers); gauges of state (instances, breakers, in-flight calls,
tasks, registry and queue) are read from their owners when `/metrics` is scraped, so they cost
nothing between scrapes. Label values are bounded: services and instances are configured or
registered, tools come from servers' catalogs (a name a server does not list is `other`),
outcomes are a fixed set. No task id, argument or path is ever a label.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from meshgate import __version__
from meshgate.errors import (
    InvalidArguments,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    SessionInstanceLost,
    Unavailable,
    UpstreamCrashed,
    UpstreamTimeout,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: Prometheus does not need them
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
OUTCOMES = ("ok", "error", "timeout", "unavailable", "crashed", "cancelled", "invalid")
FAILED_OUTCOMES = frozenset(("error", "timeout", "unavailable", "crashed"))
"""The outcomes an error rate counts: not `invalid` (the caller's own mistake) nor `cancelled`
(the caller gave up). deploy/prometheus/alerts.yml's error rate counts the same."""


def outcome_of(error: BaseException | None) -> str:
    """The `outcome` label of a call that ended with `error` (None: it succeeded)."""
    if error is None:
        return "ok"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamCrashed | SessionInstanceLost):
        return "crashed"
    if isinstance(error, Unavailable):
        return "unavailable"
    if isinstance(error, InvalidArguments | InvalidInput | NotFound | PayloadTooLarge):
        return "invalid"
    return "error"  # the upstream answered with an error, or anything else went wrong


class Metrics:
    """The gateway's metrics, in a registry of their own (with the process collectors)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            "meshgate_build_info", "meshgate version and node", ["version", "node"], registry=r
        )
        self.calls = Histogram(
            "meshgate_call_duration_seconds",
            "Calls through the router as the caller sees them, retries included",
            ["service", "tool", "outcome"],
            buckets=BUCKETS,
            registry=r,
        )
        self.attempts = Histogram(
            "meshgate_attempt_duration_seconds",
            "Each attempt of a call on one instance",
            ["service", "instance", "outcome"],
            buckets=BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "meshgate_in_flight", "Calls in flight, by service", ["service"], registry=r
        )
        self.retries = Counter(
            "meshgate_retries", "Calls tried again on another instance", ["service"], registry=r
        )
        self.breaker_state = Gauge(
            "meshgate_breaker_state",
            "Circuit breaker state: 0 closed, 1 half_open, 2 open",
            ["service", "instance"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "meshgate_breaker_transitions",
            "Circuit breaker state changes",
            ["service", "instance", "to"],
            registry=r,
        )
        self.instances = Gauge(
            "meshgate_instances", "Instances by state", ["service", "kind", "state"], registry=r
        )
        self.restarts = Counter(
            "meshgate_instance_restarts", "MCP server processes restarted", ["service"], registry=r
        )
        self.health_checks = Counter(
            "meshgate_health_checks",
            "Executed health checks and their result",
            ["service", "result"],
            registry=r,
        )
        self.tasks = Gauge("meshgate_tasks", "Tasks in the queue by status", ["status"], registry=r)
        self.tasks_running_here = Gauge(
            "meshgate_tasks_running_here", "Tasks running on this node", registry=r
        )
        self.task_durations = Histogram(
            "meshgate_task_duration_seconds",
            "Task attempts, from claim to outcome",
            ["target", "outcome"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.registry_up = Gauge(
            "meshgate_registry_up", "The registry backend is reachable", ["backend"], registry=r
        )
        self.queue_up = Gauge(
            "meshgate_queue_up", "The task queue backend is reachable", ["backend"], registry=r
        )
        self.sessions = Gauge("meshgate_sessions", "MCP client sessions open", registry=r)
        self.rate_limited_calls = Counter(
            "meshgate_rate_limited",
            "Requests refused with 429: a rate limit spent or a bound on sessions or queued "
            "tasks reached, by policy",
            ["policy"],
            registry=r,
        )
        self.audit_events = Counter(
            "meshgate_audit_events",
            "Security-relevant events written to the audit log (meshgate.audit)",
            ["event", "outcome"],
            registry=r,
        )
        self.autoscale_decisions = Counter(
            "meshgate_autoscale_decisions",
            "Pools grown or shrunk by their autoscaler, by direction and reason",
            ["service", "direction", "reason"],
            registry=r,
        )
        self.instances_desired = Gauge(
            "meshgate_instances_desired",
            "Instances the autoscaler wants an MCP pool to run",
            ["service"],
            registry=r,
        )
        self._call_children: dict[tuple[str, str, str], Any] = {}
        self._attempt_children: dict[tuple[str, str, str], Any] = {}

    # -- the hot path: cached children, one dict lookup and an observe -------------------------

    def call(self, service: str, tool: str, outcome: str, seconds: float) -> None:
        key = (service, tool, outcome)
        child = self._call_children.get(key)
        if child is None:
            child = self._call_children[key] = self.calls.labels(service, tool, outcome)
        child.observe(seconds)

    def attempt(self, service: str, instance: str, outcome: str, seconds: float) -> None:
        key = (service, instance, outcome)
        child = self._attempt_children.get(key)
        if child is None:
            child = self._attempt_children[key] = self.attempts.labels(service, instance, outcome)
        child.observe(seconds)

    # -- events ----------------------------------------------------------------------------------

    def retry(self, service: str) -> None:
        self.retries.labels(service).inc()

    def restart(self, service: str) -> None:
        self.restarts.labels(service).inc()

    def desired(self, service: str, instances: int) -> None:
        self.instances_desired.labels(service).set(instances)

    def autoscaled(self, service: str, direction: str, reason: str, desired: int) -> None:
        """Count one decision of a pool's autoscaler and the number it now wants."""
        self.autoscale_decisions.labels(service, direction, reason).inc()
        self.desired(service, desired)

    def health_check(self, service: str, ok: bool) -> None:
        self.health_checks.labels(service, "ok" if ok else "fail").inc()

    def rate_limited(self, policy: str) -> None:
        """Count one 429; `policy` is a configured policy's name or a bound's (sessions,
        queue), never a caller's name."""
        self.rate_limited_calls.labels(policy).inc()

    def task(self, target: str, outcome: str, seconds: float) -> None:
        self.task_durations.labels(target, outcome).observe(seconds)

    def breaker_hook(self, service: str, instance: str) -> Callable[[Any, Any], None]:
        """A breaker's `on_transition`: counts its changes of state."""

        def moved(old: Any, new: Any) -> None:
            self.breaker_transitions.labels(service, instance, getattr(new, "value", new)).inc()

        return moved

    def render(self) -> bytes:
        return generate_latest(self.registry)


metrics = Metrics()


def set_node(node: str) -> None:
    metrics.build_info.clear()
    metrics.build_info.labels(__version__, node).set(1)


def count_rate_limited(policy: str) -> None:
    """Count one request refused by a rate limit or a bound (`meshgate_rate_limited_total`)."""
    metrics.rate_limited(policy)
