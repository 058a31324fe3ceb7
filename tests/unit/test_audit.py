"""The audit log: one JSON line per event with its fields, URLs redacted, and the counter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from meshgate.observability.audit import audit
from meshgate.observability.logging import JsonFormatter, TextFormatter
from meshgate.observability.metrics import metrics


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("meshgate.audit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def count(event: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "meshgate_audit_events_total", {"event": event, "outcome": outcome}
    )
    return value or 0.0


def test_an_event_is_one_json_line_with_its_fields_and_is_counted(lines: io.StringIO) -> None:
    before = count("register", "ok")
    audit(
        "register",
        principal="alice",
        outcome="ok",
        service="api",
        url="http://bob:hunter2@127.0.0.1:9000/x",
        urls=["https://u:pw2@example.test/"],
        msg="a field named like a log key",
    )
    [line] = lines.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["logger"] == "meshgate.audit" and entry["level"] == "info"
    assert entry["event"] == "register"
    assert entry["principal"] == "alice"
    assert entry["outcome"] == "ok"
    assert entry["service"] == "api"
    assert entry["url"] == "http://bob:***@127.0.0.1:9000/x"
    assert entry["urls"] == ["https://u:***@example.test/"]
    assert entry["field_msg"] == "a field named like a log key"  # never replaces `msg`
    assert entry["msg"].startswith("audit register")
    assert "hunter2" not in line and "pw2" not in line
    assert count("register", "ok") == before + 1


def test_the_text_line_carries_the_fields_too() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("meshgate.audit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        audit("deregister", principal=None, outcome="not_found", service="api")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = out.getvalue()
    assert "audit deregister principal=None outcome=not_found service=api" in text


def test_an_unknown_event_is_refused_and_not_counted() -> None:
    with pytest.raises(ValueError, match="unknown audit event"):
        audit("registr", principal="x", outcome="ok")
    assert count("registr", "ok") == 0
