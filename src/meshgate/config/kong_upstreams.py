"""Kong upstreams and targets as meshgate HTTP service instances: a target is an instance of
each service whose host names the upstream, with its weight; the upstream's algorithm is the
service's strategy; its active health check is each instance's check, its passive one the
service's circuit breaker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshgate.config.kong_toml import Context

# Kong's balancing algorithms and meshgate's strategies.
_ALGORITHMS = {
    "round-robin": "weighted",  # Kong's round robin is weighted
    "least-connections": "least_connections",
    "consistent-hashing": "consistent_hash",
    "latency": "p2c",
}
_HASH_KEYS = {"ip": "client_ip"}
_KONG_DEFAULT_WEIGHT = 100
_MAX_WEIGHT = 1000  # meshgate's


@dataclass
class Upstream:
    """One Kong upstream, read: its targets and what its services get."""

    name: str
    key: str
    raw: dict[str, Any]
    targets: list[tuple[str, str, int]] = field(default_factory=list)  # key, host:port, weight
    strategy: str = "weighted"
    hash_key: str | None = None
    check: dict[str, Any] | None = None
    breaker: dict[str, Any] | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, ctx: Context, service: str, protocol: str, path: str) -> None:
        """Make `service`'s instances, strategy and breaker from this upstream."""
        out = ctx.out
        for key, message in self.notes:
            ctx.note(key, f"(service {service}) {message}")
        live = [(k, t, w) for k, t, w in self.targets if w > 0]
        for k, t, w in self.targets:
            if w == 0:
                ctx.note(k, f"target {t} has weight 0 (Kong sends it nothing): not imported")
        if not live:
            ctx.note(
                self.key,
                f"upstream {self.name!r} has no target with a weight: "
                f"service {service} gets no instance",
            )
        top = max((w for _, _, w in live), default=1)
        scale = _MAX_WEIGHT / top if top > _MAX_WEIGHT else 1.0
        if scale != 1.0:
            ctx.note(self.key, f"weights scaled by {scale:.4g} into meshgate's 1 to 1000")
        for _, target, weight in live:
            out.instance(
                service,
                f"{protocol}://{target}{path}",
                weight=max(1, round(weight * scale)),
                check=self.check,
                tags=[],
            )
        if self.check is not None and self.check["type"] == "http" and path:
            ctx.note(
                self.key,
                f"(service {service}) the check GETs {path}{self.check['path']}: meshgate "
                f"checks under the instance's URL, which has the service's path {path}",
            )
        if self.check is None:
            out.comment(
                service,
                f"Upstream {self.name!r} ran no active health check: a TCP check (meshgate's "
                "default would GET /health) keeps a closed port out",
            )
        policy = out.policy(service)
        policy["strategy"] = self.strategy
        if self.hash_key is not None:
            policy["hash_key"] = self.hash_key
        if self.breaker is not None:
            policy["breaker"] = self.breaker


def _num(ctx: Context, key: str, item: dict[str, Any], name: str, default: float) -> float:
    v = item.get(name, default)
    if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
        raise ctx.fail(f"{key}.{name}", item, "expected a number of 0 or more")
    return float(v)


def _target(ctx: Context, key: str, item: dict[str, Any]) -> tuple[str, str, int]:
    target = item.get("target")
    if not isinstance(target, str) or not target:
        raise ctx.fail(f"{key}.target", item, "expected host:port")
    has_port = "]:" in target if target.startswith("[") else target.count(":") == 1
    if not has_port:
        target += ":8000"  # Kong's default target port
    weight = int(_num(ctx, key, item, "weight", _KONG_DEFAULT_WEIGHT))
    if weight > 65535:
        raise ctx.fail(f"{key}.weight", item, "a target's weight is 0 to 65535")
    return key, target, weight


def _min_positive(*values: float) -> float | None:
    positive = [v for v in values if v > 0]
    return min(positive) if positive else None


def _active(ctx: Context, key: str, up: Upstream, active: dict[str, Any]) -> None:
    healthy = active.get("healthy") or {}
    unhealthy = active.get("unhealthy") or {}
    h_int = _num(ctx, f"{key}.healthy", healthy, "interval", 0)
    u_int = _num(ctx, f"{key}.unhealthy", unhealthy, "interval", 0)
    interval = _min_positive(h_int, u_int)
    if interval is None:
        return  # Kong's active checks are off while both intervals are 0
    if h_int and u_int and h_int != u_int:
        up.notes.append(
            (
                key,
                f"healthy.interval {h_int} s and unhealthy.interval {u_int} s: meshgate checks "
                f"every instance every {interval:g} s",
            )
        )
    kind = str(active.get("type", "http"))
    check: dict[str, Any] = {}
    if kind in ("http", "https"):
        check["type"] = "http"
        path = active.get("http_path", "/")
        check["path"] = path if isinstance(path, str) and path.startswith("/") else "/"
        if kind == "https" and active.get("https_verify_certificate") is False:
            up.notes.append((key, "https_verify_certificate: false is not imported"))
    elif kind == "tcp":
        check["type"] = "tcp"
    else:
        up.notes.append((f"{key}.type", f"{kind} checks are not supported: a TCP check instead"))
        check["type"] = "tcp"
    check["interval_s"] = float(min(max(interval, 0.05), 3600))
    timeout = active.get("timeout", 1)
    check["timeout_s"] = float(
        min(max(timeout if isinstance(timeout, int | float) else 1, 0.01), 60)
    )
    failures = _min_positive(
        *(
            _num(ctx, f"{key}.unhealthy", unhealthy, k, 0)
            for k in ("http_failures", "tcp_failures", "timeouts")
        )
    )
    if failures is None:
        up.notes.append(
            (
                f"{key}.unhealthy",
                "no failure count set (Kong would never take a target out "
                "by active checks): meshgate's default of 3 failures in a row",
            )
        )
    else:
        check["unhealthy_after"] = int(min(failures, 100))
    successes = _num(ctx, f"{key}.healthy", healthy, "successes", 0)
    check["healthy_after"] = int(min(max(successes, 1), 100))
    statuses = healthy.get("http_statuses")
    if statuses and any(not 200 <= int(s) < 300 for s in statuses):
        up.notes.append(
            (f"{key}.healthy.http_statuses", "meshgate's HTTP check passes on 2xx only")
        )
    for attr in ("headers", "https_sni", "concurrency"):
        if active.get(attr) not in (None, 10 if attr == "concurrency" else None):
            up.notes.append((f"{key}.{attr}", "not imported"))
    up.check = check


def _passive(ctx: Context, key: str, up: Upstream, passive: dict[str, Any]) -> None:
    unhealthy = passive.get("unhealthy") or {}
    failures = _min_positive(
        *(
            _num(ctx, f"{key}.unhealthy", unhealthy, k, 0)
            for k in ("http_failures", "tcp_failures", "timeouts")
        )
    )
    if failures is None:
        return  # off
    up.breaker = {"failure_threshold": int(failures)}
    up.notes.append(
        (
            key,
            f"passive checks become the circuit breaker ({int(failures)} failures in a row "
            "open it); unlike Kong's, it lets a trial call through after recovery_s",
        )
    )


def _upstream(ctx: Context, key: str, item: dict[str, Any]) -> Upstream:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.fail(f"{key}.name", item, "an upstream has a name (the host services use)")
    up = Upstream(name, key, item)
    algorithm = str(item.get("algorithm", "round-robin"))
    if algorithm not in _ALGORITHMS:
        up.notes.append((f"{key}.algorithm", f"{algorithm!r} is not known: weighted round robin"))
    up.strategy = _ALGORITHMS.get(algorithm, "weighted")
    if algorithm == "latency":
        up.notes.append(
            (
                f"{key}.algorithm",
                "latency: meshgate's p2c picks the better of two instances by "
                "calls in flight and latency",
            )
        )
    if algorithm == "least-connections":
        up.notes.append(
            (f"{key}.algorithm", "least_connections in meshgate does not weigh targets")
        )
    if up.strategy == "consistent_hash":
        hash_on = str(item.get("hash_on", "none"))
        if hash_on == "none":
            up.strategy = "weighted"
            up.notes.append((f"{key}.hash_on", "none: Kong balances by weight, and so does this"))
        elif hash_on == "query_arg" and item.get("hash_on_query_arg"):
            up.hash_key = f"arg:{item['hash_on_query_arg']}"
        elif hash_on in _HASH_KEYS:
            up.hash_key = _HASH_KEYS[hash_on]
        else:
            up.hash_key = "client_ip"
            up.notes.append(
                (
                    f"{key}.hash_on",
                    f"hashing on {hash_on} is not supported: on the client's "
                    'address (or X-Meshgate-Session with hash_key = "session")',
                )
            )
    for attr in ("host_header", "client_certificate", "use_srv_name", "hash_fallback"):
        if item.get(attr) not in (None, False, "none"):
            up.notes.append((f"{key}.{attr}", "not imported"))
    checks = item.get("healthchecks") or {}
    if isinstance(checks, dict):
        if isinstance(checks.get("active"), dict):
            _active(ctx, f"{key}.healthchecks.active", up, checks["active"])
        if isinstance(checks.get("passive"), dict):
            _passive(ctx, f"{key}.healthchecks.passive", up, checks["passive"])
        if checks.get("threshold"):
            up.notes.append((f"{key}.healthchecks.threshold", "not imported"))
    for tkey, target in ctx.items(item, "targets", f"{key}."):
        up.targets.append(_target(ctx, tkey, target))
    return up


def read_upstreams(ctx: Context, data: dict[str, Any]) -> dict[str, Upstream]:
    """Every upstream of the file by name, with its targets (nested or top-level)."""
    ups: dict[str, Upstream] = {}
    for key, item in ctx.items(data, "upstreams", ""):
        up = _upstream(ctx, key, item)
        if up.name in ups:
            raise ctx.fail(f"{key}.name", item, f"a second upstream named {up.name!r}")
        ups[up.name] = up
        if item.get("id") is not None:
            ups.setdefault(str(item["id"]), up)
    for key, item in ctx.items(data, "targets", ""):
        ref = item.get("upstream")
        name = ref.get("name") or ref.get("id") if isinstance(ref, dict) else ref
        if not isinstance(name, str) or name not in ups:
            raise ctx.fail(f"{key}.upstream", item, f"no upstream named {name!r} in this file")
        ups[name].targets.append(_target(ctx, key, item))
    return ups
