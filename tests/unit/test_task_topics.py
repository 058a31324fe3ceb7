"""`[tasks.topics.NAME]`: task topics of the older enqueue shapes, loaded and checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from meshgate.config import Settings, collect

PY = sys.executable


def load(tmp_path: Path, toml: str) -> tuple[Settings | None, list[str]]:
    cfg = tmp_path / "mcp.json"
    cfg.write_text(json.dumps({"mcpServers": {"fault": {"command": PY, "args": []}}}))
    pol = tmp_path / "meshgate.toml"
    pol.write_text(toml)
    settings, problems = collect(cfg, pol, environ={})
    return settings, [f"{p.key}: {p.reason}" for p in problems if p.severity == "error"]


def test_topics_map_to_a_tool_or_a_service(tmp_path: Path) -> None:
    settings, problems = load(
        tmp_path,
        """
[tasks.topics.echo]
server = "fault"
tool = "echo"

[tasks.topics."billing:invoice"]
service = "billing"
path = "/invoices"
max_attempts = 5
""",
    )
    assert problems == [] and settings is not None
    topics = settings.tasks.topics
    assert topics["echo"].target({"text": "hi"}) == {
        "server": "fault",
        "tool": "echo",
        "arguments": {"text": "hi"},
    }
    assert topics["billing:invoice"].target({"n": 1}) == {
        "service": "billing",
        "method": "POST",
        "path": "/invoices",
        "body": {"n": 1},
    }
    assert topics["billing:invoice"].max_attempts == 5


def test_no_topics_is_the_default(tmp_path: Path) -> None:
    settings, problems = load(tmp_path, "")
    assert problems == [] and settings is not None and settings.tasks.topics == {}


def test_bad_topics_are_reported_with_their_key(tmp_path: Path) -> None:
    cases = {
        '[tasks.topics.a]\nserver = "fault"\ntool = "echo"\nservice = "s"\n': "not both",
        '[tasks.topics.a]\nserver = "fault"\n': "server and tool go together",
        "[tasks.topics.a]\nmax_attempts = 2\n": "give server and tool",
        '[tasks.topics.a]\nservice = "s"\npath = "x"\n': "path must start with '/'",
        '[tasks.topics."a b"]\nservice = "s"\n': "topic names",
        '[tasks.topics.a]\nserver = "nope"\ntool = "t"\n': "no server of this name",
        '[tasks.topics.a]\nservice = "s"\nmethod = "FETCH"\n': "tasks.topics.a.method",
        '[tasks.topics.a]\nservice = "s"\ncolour = "red"\n': "unknown key",
        'tasks = "x"\n': "expected a table",
    }
    for toml, expected in cases.items():
        settings, problems = load(tmp_path, toml)
        assert settings is None and any(expected in p for p in problems), (toml, problems)
