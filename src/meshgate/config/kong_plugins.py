"""Kong plugins and what meshgate does instead: `rate-limiting` becomes `[[limits]]`, a global
`request-size-limiting` the body bound, the authentication plugins a pointer to `[auth]`;
the built-in equivalents (metrics, tracing, logs) and the plugins without one are notes.
docs/operations.md, "Moving from Kong", has the table."""

from __future__ import annotations

from typing import Any

from meshgate.config.kong_toml import Fragment, Limit, Note

_WINDOWS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400), ("month", 2592000),
            ("year", 31536000))  # fmt: skip
_PER = {"consumer": "principal", "credential": "principal", "service": "target"}
_SIZE_UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}

AUTH_PLUGINS = frozenset(
    {"key-auth", "jwt", "basic-auth", "oauth2", "hmac-auth", "ldap-auth", "openid-connect",
     "key-auth-enc", "mtls-auth"}
)  # fmt: skip

# Plugins meshgate covers by itself, or has no equivalent for: the note each gets.
EXPLAINED = {
    "acl": 'give roles ([roles.NAME] allow = ["http:SERVICE"]) to the keys or tokens that may call',
    "cors": "not mapped: meshgate adds no CORS headers to proxied answers (the service "
    "answers preflights itself); mesh.allowed_origins guards meshgate's own API only",
    "ip-restriction": "not mapped: meshgate has no per-route address list; bind it to a "
    "private address or filter in front",
    "prometheus": "built in: meshgate serves /metrics (meshgate_calls_total, latency "
    "histograms per service and instance)",
    "opentelemetry": "built in: spans per request and attempt, exported over OTLP when "
    "OTEL_EXPORTER_OTLP_ENDPOINT is set",
    "zipkin": "built in as OpenTelemetry tracing (OTLP), not Zipkin's format",
    "correlation-id": "built in: W3C traceparent is taken and passed on",
    "file-log": "built in: meshgate logs JSON lines on stderr",
    "http-log": "not mapped: ship meshgate's JSON log lines (stderr) with a log agent",
    "tcp-log": "not mapped: ship meshgate's JSON log lines (stderr) with a log agent",
    "udp-log": "not mapped: ship meshgate's JSON log lines (stderr) with a log agent",
    "syslog": "not mapped: ship meshgate's JSON log lines (stderr) with a log agent",
    "request-transformer": "not mapped: only gateway-wide headers exist "
    '([[mesh.interceptors]] type = "headers")',
    "response-transformer": "not mapped: meshgate passes answers on as they are",
    "proxy-cache": "not mapped: meshgate caches no answers",
    "request-termination": "not mapped",
    "bot-detection": "not mapped",
    "rate-limiting-advanced": "not mapped: give plain [[limits]] (token buckets)",
    "response-ratelimiting": "not mapped: meshgate limits requests, not by the answers' headers",
}


def _limits(out: Fragment, key: str, config: dict[str, Any], match: str, tag: str) -> None:
    limit_by = str(config.get("limit_by", "consumer"))
    per = _PER.get(limit_by, "principal")
    if limit_by not in _PER:
        out.notes.append(
            _note(
                key,
                f"limit_by {limit_by}: meshgate counts per principal (the API key or "
                "token; without [auth] every caller is the one `local` principal)",
            )
        )
    if config.get("policy") in ("cluster", "redis"):
        out.notes.append(
            _note(
                key,
                "shared counters: set mesh.rate_limit_store to a redis:// URL (the "
                "registry's Redis is the default when the registry is on Redis)",
            )
        )
    found = False
    for window, seconds in _WINDOWS:
        count = config.get(window)
        if count is None:
            continue
        if not isinstance(count, int | float) or count <= 0:
            raise ValueError(f"{key}.config.{window}: expected a positive number")
        found = True
        burst = max(1, min(int(count), 1_000_000))
        out.limits.append(
            Limit(
                name=f"{tag}-{window}"[:64],
                match=match,
                per=per,
                rate_per_s=count / seconds,
                burst=burst,
            )
        )
    if not found:
        out.notes.append(_note(key, "rate-limiting without a window: not imported"))
    elif sum(1 for w, _ in _WINDOWS if config.get(w) is not None) > 1:
        out.notes.append(_note(key, "each window is its own token bucket ([[limits]])"))


def _note(key: str, message: str) -> Note:
    return Note(key, message)


def map_plugin(
    out: Fragment, key: str, name: str, config: dict[str, Any], scope: tuple[str, str | None]
) -> None:
    """Put a plugin's equivalent into `out`, or a note of why there is none."""
    where, service = scope
    if name == "rate-limiting":
        match = f"http:{service}" if service else "http:*"
        if where == "route":
            out.notes.append(
                _note(
                    key,
                    f"a route's rate limit counts every request to {service} (limits "
                    "match services, not routes)",
                )
            )
        tag = f"kong-{service or 'all'}-{len(out.limits)}"
        _limits(out, key, config, match, tag)
        return
    if name in AUTH_PLUGINS:
        out.auth.append(name)
        out.notes.append(
            _note(
                key,
                f"{name}: turn on [auth] (see the comment above): meshgate then "
                "authenticates every request, not only this " + (where if service else "gateway"),
            )
        )
        return
    if name == "request-size-limiting":
        unit = _SIZE_UNITS.get(str(config.get("size_unit", "megabytes")), 1024 * 1024)
        size = config.get("allowed_payload_size", 128)
        if not isinstance(size, int | float) or size <= 0:
            raise ValueError(f"{key}.config.allowed_payload_size: expected a positive number")
        limit = int(size * unit)
        if where == "global":
            out.mesh["max_body_bytes"] = limit
        else:
            out.notes.append(
                _note(
                    key,
                    f"meshgate bounds bodies for the whole gateway: mesh.max_body_bytes "
                    f"= {limit} would apply it everywhere; not set",
                )
            )
        return
    out.notes.append(_note(key, f"plugin {name}: " + EXPLAINED.get(name, "not supported")))
