"""The audit log: one structured line per security-relevant event, and a counter of them.

Lines go to the logger `meshgate.audit` at info level under the gateway's log setup: with
JSON lines (`log_format`), each is one object with `event`, `principal`, `outcome` and the
event's own fields next to `ts`, `level` and `logger`; on a terminal, one human line of
`key=value` pairs. Every event is counted in `meshgate_audit_events_total{event, outcome}`.
Credentials in URLs are redacted before a line is written, so an audit line can be shipped
where the gateway's secrets may not go.
"""

from __future__ import annotations

import logging
from typing import Any

from meshgate.observability.metrics import metrics
from meshgate.urls import redact_url

log = logging.getLogger("meshgate.audit")

EVENTS = (
    "auth_failed",
    "denied",
    "rate_limited",
    "key_created",
    "key_revoked",
    "register",
    "deregister",
    "tool_call",
    "configure",
)
"""The events there are; the counter's `event` label takes no other value."""

RESERVED = ("ts", "level", "logger", "msg", "trace_id", "span_id", "exc")
"""Keys of every JSON log line, which an event's fields cannot take over."""


def redact(value: Any) -> Any:
    """`value` with the password of any URL in it replaced by `***` (`http://user:***@host`);
    lists and dicts are redacted throughout."""
    if isinstance(value, str):
        return redact_url(value) if "://" in value and "@" in value else value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def audit(event: str, *, principal: str | None, outcome: str, **fields: Any) -> None:
    """Record one security-relevant event: who (`principal`, None when nobody is known),
    what (`event`, one of EVENTS), how it ended (`outcome`: `ok`, `refused`, `denied`...),
    and the event's own fields (JSON values; URLs in them are redacted)."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    entry: dict[str, Any] = {"event": event, "principal": principal, "outcome": outcome}
    for key, value in fields.items():
        entry[f"field_{key}" if key in RESERVED or key in entry else key] = redact(value)
    counter = _counters.get((event, outcome))
    if counter is None:
        counter = _counters[event, outcome] = metrics.audit_events.labels(event, outcome)
    counter.inc()
    # The fields go as they are: a JSON line carries them flat, a text line as key=value
    # (observability.logging); nothing is formatted twice. One line per tool call is the
    # hot case (bench/bench_security.py).
    log.info("audit %s", event, extra={"fields": entry})


_counters: dict[tuple[str, str], Any] = {}
