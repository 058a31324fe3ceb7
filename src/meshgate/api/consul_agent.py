"""Consul service definitions (`PUT /v1/agent/service/register`) read into meshgate
registrations, and what of them only the Consul view needs.

A Consul registration becomes an HTTP service instance of meshgate's registry: its Address and
Port are where the instance is called and checked, its Meta its metadata, its Weights.Passing
its weight. Its one check becomes the instance's executed check (HTTP: a GET of the check
URL's path, which must be on the service's own address and port; TCP: a connect to it) or a
`ttl` check the instance reports itself (`/v1/agent/check/pass|warn|fail|update`). What Consul
keeps beside (the check's id, name and notes, the warning weight, DeregisterCriticalServiceAfter)
is kept in the metadata under `consul-` keys, which Consul reserves: no client can send them.

Keys are matched without regard to case or underscores, as Consul reads them (`ID`, `id`,
`DeregisterCriticalServiceAfter`, `deregister_critical_service_after`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from meshgate.config import Check, Registration
from meshgate.errors import InvalidInput

CHECK_ID = "consul-check-id"
CHECK_NAME = "consul-check-name"
CHECK_NOTES = "consul-check-notes"
WARNING_WEIGHT = "consul-weight-warning"
DEREGISTER_AFTER = "consul-deregister-critical-after-s"
RESERVED_PREFIX = "consul-"

# A registration without a check gets a TCP connect to its address and port: meshgate lists
# nothing as passing that nobody checked (Consul would call it passing forever).
DEFAULT_INTERVAL_S = 10.0
DEFAULT_TIMEOUT_S = 10.0  # an HTTP or TCP check's Timeout when none is given, as in Consul
Status = Literal["passing", "warning", "critical"]
CHECK_STATUSES: tuple[Status, ...] = ("passing", "warning", "critical")
MAX_OUTPUT = 4096  # Consul's default output_max_size
_META_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_UNSUPPORTED_CHECKS = (
    ("args", "script"),
    ("scriptargs", "script"),
    ("script", "script"),
    ("grpc", "gRPC"),
    ("dockercontainerid", "Docker"),
    ("h2ping", "H2PING"),
    ("udp", "UDP"),
    ("aliasservice", "alias"),
    ("aliasnode", "alias"),
    ("osservice", "OS service"),
)
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def folded(value: Any, what: str) -> dict[str, Any]:
    """A JSON object with its keys lower-cased and underscores dropped (Consul's matching)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"Invalid {what}: expected a JSON object")
    return {str(k).replace("_", "").lower(): v for k, v in value.items()}


def duration(value: Any, what: str) -> float:
    """A Go duration ("10s", "1m30s", "250ms") in seconds; a number is nanoseconds, as Go's
    time.Duration reads JSON."""
    if isinstance(value, bool):
        raise InvalidInput(f"Invalid {what}: {value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f'Invalid {what}: {value!r} is not a duration such as "10s"')
    text = value.strip()
    if text == "0":
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidInput(f'Invalid {what}: {value!r} is not a duration such as "10s"')
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"Invalid {what}: expected a string")
    return value


@dataclass(frozen=True)
class Definition:
    """A Consul service definition read: the registration, and the TTL check's first status
    (None: Consul's own default, critical until the first update)."""

    registration: Registration
    status: Status | None


def read_definition(body: dict[str, Any], *, peer: str | None) -> Definition:
    """A Consul service definition as a registration; InvalidInput (400) with Consul's kind of
    sentence for what meshgate cannot honour. `peer`: the registering client's address, the
    service's Address when it gives none (Consul would use its agent's, which runs beside the
    service)."""
    d = folded(body, "service definition")
    name = _text(d.get("name"), "service name")
    if not name:
        raise InvalidInput("Missing service name")
    for key, what in (
        ("kind", "Connect proxies and gateways"),
        ("proxy", "Connect proxies"),
        ("socketpath", "services on Unix sockets"),
    ):
        if d.get(key):
            raise InvalidInput(f"Invalid service: meshgate does not register {what} ({key})")
    connect = d.get("connect")
    if isinstance(connect, dict) and any(connect.values()):
        raise InvalidInput("Invalid service: meshgate does not run Connect (service mesh TLS)")
    id_ = _text(d.get("id"), "service ID") or name
    address = _text(d.get("address"), "service address") or peer
    if not address:
        raise InvalidInput("Invalid service address: give Address (the client's is not known)")
    port = d.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidInput(
            "Invalid service port: meshgate calls and checks the service at Address:Port; "
            "give a Port from 1 to 65535"
        )
    tags = d.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidInput("Invalid service tags: expected a list of strings")
    metadata: dict[str, Any] = dict(_meta(d.get("meta")))
    weight = 1
    weights = d.get("weights")
    if weights is not None:
        w = folded(weights, "service weights")
        passing, warning = w.get("passing", 1), w.get("warning", 1)
        if not isinstance(passing, int) or isinstance(passing, bool) or passing < 1:
            raise InvalidInput("Invalid service weights: Passing must be at least 1")
        if not isinstance(warning, int) or isinstance(warning, bool) or warning < 0:
            raise InvalidInput("Invalid service weights: Warning must be 0 or more")
        weight = passing
        if warning != 1:
            metadata[WARNING_WEIGHT] = str(warning)
    checks: list[Any] = []
    if d.get("check"):
        checks.append(d["check"])
    extra = d.get("checks") or []
    if not isinstance(extra, list):
        raise InvalidInput("Invalid checks: expected a list")
    checks += extra
    if len(checks) > 1:
        raise InvalidInput(
            "Invalid checks: meshgate runs one check per service instance; give one HTTP, "
            "TCP or TTL check"
        )
    check, scheme, status = _check(checks[0] if checks else None, id_, name, address, port)
    for key, value in check.meta.items():
        metadata[key] = value
    fields: dict[str, Any] = {
        "name": name,
        "id": id_,
        "tags": tags,
        "metadata": metadata,
        "weight": weight,
        "check": check.check,
    }
    if scheme == "https":
        host = f"[{address}]" if ":" in address else address
        fields["url"] = f"https://{host}:{port}"
    else:
        fields["address"], fields["port"] = address, port
    try:
        reg = Registration.model_validate(fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "service"
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        raise InvalidInput(f"Invalid service {where}: {msg}") from None
    return Definition(reg, status)


def _meta(value: Any) -> dict[str, str]:
    """Meta checked as Consul checks it (64 pairs, keys of letters, digits, '-' and '_' up to
    128, values up to 512, no key in the reserved `consul-` space)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("Invalid service meta: expected an object of strings")
    if len(value) > 64:
        raise InvalidInput("Invalid service meta: at most 64 pairs")
    for key, v in value.items():
        if not _META_KEY.fullmatch(key):
            raise InvalidInput(
                f"Invalid service meta: key {key!r} must be 1 to 128 letters, digits, '-' or '_'"
            )
        if key.lower().startswith(RESERVED_PREFIX):
            raise InvalidInput(f"Invalid service meta: key {key!r} uses the reserved prefix")
        if not isinstance(v, str) or len(v) > 512:
            raise InvalidInput(f"Invalid service meta: value of {key!r} must be a string ≤512")
    return dict(value)


@dataclass(frozen=True)
class _CheckRead:
    check: dict[str, Any]
    meta: dict[str, str]


def _check(
    raw: Any, id_: str, name: str, address: str, port: int
) -> tuple[_CheckRead, str, Status | None]:
    """The meshgate check of a Consul check definition (None: the default TCP check); with
    the scheme the service is called by and the TTL check's first status."""
    meta = {CHECK_ID: f"service:{id_}"}
    if raw is None:
        default = {"type": "tcp", "interval_s": DEFAULT_INTERVAL_S, "timeout_s": DEFAULT_TIMEOUT_S}
        return _CheckRead(default, meta), "http", None
    c = folded(raw, "check")
    for key, kind in _UNSUPPORTED_CHECKS:
        if c.get(key):
            raise InvalidInput(
                f"Invalid check: meshgate does not run {kind} checks; give an HTTP, TCP or TTL "
                "check"
            )
    check_id = _text(c.get("checkid") or c.get("id"), "check ID")
    if check_id:
        meta[CHECK_ID] = check_id
    if check_name := _text(c.get("name"), "check name"):
        meta[CHECK_NAME] = check_name
    if notes := _text(c.get("notes"), "check notes"):
        meta[CHECK_NOTES] = notes[:512]
    if c.get("deregistercriticalserviceafter"):
        after = duration(c["deregistercriticalserviceafter"], "DeregisterCriticalServiceAfter")
        meta[DEREGISTER_AFTER] = f"{after:g}"
    status = status_of(_text(c.get("status"), "check status") or None)
    healthy_after = _count(c.get("successbeforepassing"), "SuccessBeforePassing")
    unhealthy_after = _count(c.get("failuresbeforecritical"), "FailuresBeforeCritical")
    thresholds = {"healthy_after": healthy_after, "unhealthy_after": unhealthy_after}
    kinds = [k for k in ("ttl", "http", "tcp") if c.get(k)]
    if len(kinds) != 1:
        raise InvalidInput("Invalid check: give exactly one of HTTP, TCP or TTL")
    kind = kinds[0]
    if kind == "ttl":
        ttl = duration(c["ttl"], "check TTL")
        check = {"type": "ttl", "interval_s": ttl, **thresholds}
        return _CheckRead(_bounded(check), meta), "http", status
    if not c.get("interval"):
        raise InvalidInput(f"Invalid check: {kind.upper()} checks need an Interval")
    timing = {
        "interval_s": duration(c["interval"], "check Interval"),
        "timeout_s": duration(c["timeout"], "check Timeout")
        if c.get("timeout")
        else DEFAULT_TIMEOUT_S,
    }
    if kind == "tcp":
        target = _text(c["tcp"], "check TCP")
        host, _, tcp_port = target.rpartition(":")
        _same_place(host.strip("[]"), tcp_port, address, port, f"TCP check {target!r}")
        return _CheckRead(_bounded({"type": "tcp", **timing, **thresholds}), meta), "http", None
    method = _text(c.get("method"), "check Method")
    if method and method.upper() != "GET":
        raise InvalidInput("Invalid check: meshgate's HTTP checks are GETs (Method)")
    if c.get("header") or c.get("body"):
        raise InvalidInput("Invalid check: meshgate's HTTP checks send no Header or Body")
    if c.get("tlsskipverify"):
        raise InvalidInput("Invalid check: meshgate verifies the TLS of HTTPS checks")
    url = _text(c["http"], "check HTTP")
    try:
        parts = urlsplit(url)
        url_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidInput(f"Invalid check: HTTP {url!r} is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"Invalid check: HTTP {url!r} is not an http:// or https:// URL")
    _same_place(parts.hostname or "", str(url_port), address, port, f"HTTP check {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    check = {"type": "http", "path": path, **timing, **thresholds}
    return _CheckRead(_bounded(check), meta), parts.scheme, None


def status_of(value: str | None) -> Status | None:
    """A check status Consul knows (None stays None); InvalidInput otherwise."""
    for status in CHECK_STATUSES:
        if value == status:
            return status
    if value is None:
        return None
    raise InvalidInput(f"Invalid check status: {value!r}")


def _count(value: Any, what: str) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"Invalid check {what}: expected a count")
    return max(1, value)  # Consul's 0 and 1 both move on the first result


def _bounded(check: dict[str, Any]) -> dict[str, Any]:
    """The check within meshgate's bounds, or a Consul-style refusal naming the one broken."""
    try:
        return Check.model_validate(check).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err.get("loc", ("check",))[-1])
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        raise InvalidInput(f"Invalid check: {field}: {msg}") from None


def _same_place(host: str, port: str, address: str, service_port: int, what: str) -> None:
    """Refuse a check of another address than the service's: meshgate checks the instance it
    routes to."""
    host, address = host.lower(), address.lower()
    same_host = host == address or (host in _LOOPBACK and address in _LOOPBACK)
    if not same_host or port != str(service_port):
        raise InvalidInput(
            f"Invalid check: the {what} must be on the service's own Address and Port "
            f"({address}:{service_port}): meshgate checks the instance it routes calls to"
        )


def consul_meta(metadata: dict[str, Any]) -> dict[str, str]:
    """A registration's metadata as Consul's Meta: the `consul-` keys left out, values as
    strings (a native registration's metadata may hold other JSON)."""
    return {
        k: v if isinstance(v, str) else str(v)
        for k, v in metadata.items()
        if not k.startswith(RESERVED_PREFIX)
    }
