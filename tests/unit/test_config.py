"""Configuration loading, merging, precedence and problem reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from meshgate.config import ConfigProblems, check_file, collect, load

PY = sys.executable


def write(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_claude_desktop_file_loads_unchanged(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "claude_desktop_config.json",
        {
            "mcpServers": {
                "time": {"command": PY, "args": ["-m", "x"], "env": {"TZ": "UTC"}},
                "code": {"type": "stdio", "command": PY, "args": []},
                "remote": {
                    "type": "http",
                    "url": "https://example.invalid/mcp",
                    "headers": {"Authorization": "Bearer ${TOKEN:-none}"},
                },
                "old": {"type": "sse", "url": "https://example.invalid/sse"},
                "off": {"command": "does-not-matter", "disabled": True},
            },
            "globalShortcut": "Ctrl+Space",
        },
    )
    settings = load(cfg, environ={"PATH": "/usr/bin", "TOKEN": "t0k"})
    assert set(settings.servers) == {"time", "code", "remote"}
    assert settings.servers["time"].env == {"TZ": "UTC"}
    assert settings.servers["time"].args == ("-m", "x")
    remote = settings.servers["remote"]
    assert remote.url == "https://example.invalid/mcp"
    assert remote.headers == {"Authorization": "Bearer t0k"}
    warnings = [str(p) for p in check_file(cfg) if p.severity == "warning"]
    assert any("mcpServers.old.type" in w and "HTTP+SSE" in w for w in warnings)


def test_variables_expand_with_defaults(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "s": {
                    "command": PY,
                    "args": ["${ROOT}/data", "${MISSING:-fallback}"],
                    "env": {"TOKEN": "${TOKEN}"},
                }
            }
        },
    )
    s = load(cfg, environ={"ROOT": "/srv", "TOKEN": "t0k"}).servers["s"]
    assert s.args == ("/srv/data", "fallback")
    assert s.env == {"TOKEN": "t0k"}


def test_unset_variable_without_default_is_a_problem(tmp_path: Path) -> None:
    cfg = write(tmp_path / ".mcp.json", {"mcpServers": {"s": {"command": PY, "args": ["${NOPE}"]}}})
    with pytest.raises(ConfigProblems) as e:
        load(cfg, environ={})
    assert "NOPE" in str(e.value)


def test_policy_merges_defaults_and_per_server(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / ".mcp.json", {"mcpServers": {"a": {"command": PY}, "b": {"command": PY}}}
    )
    pol = write(
        tmp_path / "meshgate.toml",
        """
[defaults]
strategy = "round_robin"
max_in_flight = 4
[defaults.breaker]
failure_threshold = 7
[servers.b]
instances = 3
strategy = "p2c"
idempotent_tools = ["read"]
[servers.b.breaker]
recovery_s = 5
""",
    )
    s = load(cfg, pol, environ={})
    a, b = s.servers["a"].policy, s.servers["b"].policy
    assert (a.strategy, a.instances.min, a.instances.max, a.max_in_flight) == (
        "round_robin",
        1,
        1,
        4,
    )
    assert (b.strategy, b.instances.min, b.instances.max, b.max_in_flight) == ("p2c", 3, 3, 4)
    assert b.breaker.failure_threshold == 7 and b.breaker.recovery_s == 5
    assert b.idempotent_tools == ("read",)


def test_command_line_beats_environment_beats_file(tmp_path: Path) -> None:
    pol = write(tmp_path / "meshgate.toml", '[mesh]\nport = 1111\nhost = "127.0.0.2"\n')
    env = {"MESHGATE_PORT": "2222"}
    assert load(None, pol, environ={}).mesh.port == 1111
    assert load(None, pol, environ=env).mesh.port == 2222
    assert load(None, pol, environ=env, overrides={"port": 3333}).mesh.port == 3333
    assert load(None, pol, environ=env).mesh.host == "127.0.0.2"
    assert load(None, None, environ={}).mesh.port == 8800


def test_every_problem_is_reported_with_file_and_key(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "nocmd": {"args": []},
                "badargs": {"command": PY, "args": "--flag"},
                "badenv": {"command": PY, "env": {"X": 1}},
                "missing": {"command": "no-such-binary-for-meshgate"},
                "bad name!": {"command": PY},
            }
        },
    )
    pol = write(
        tmp_path / "meshgate.toml",
        """
[defaults]
strategy = "fastest"
instances = 0
[servers.ghost]
instances = 2
[mesh]
port = 99999
surprise = 1
""",
    )
    settings, problems = collect(cfg, pol, environ={"PATH": "/usr/bin:/bin"})
    assert settings is None
    text = "\n".join(str(p) for p in problems)
    for expected in (
        "mcpServers.nocmd.command: missing",
        "mcpServers.badargs.args: expected a list of strings",
        "mcpServers.badenv.env: expected an object of string values",
        "mcpServers.missing.command: 'no-such-binary-for-meshgate' is not found on PATH",
        "mcpServers.bad name!: server name",
        "defaults.strategy: unknown strategy 'fastest'",
        "defaults.instances:",
        "servers.ghost: no server of this name",
        "mesh.port:",
        "mesh.surprise: unknown key",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert all(p.file in (str(cfg), str(pol)) for p in problems)


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    cfg = write(tmp_path / ".mcp.json", '{\n  "mcpServers": {\n    "a": {"command": "x",}\n  }\n}')
    [problem] = check_file(cfg)
    assert "line 3" in problem.reason and problem.file == str(cfg)


def test_invalid_toml_and_unknown_tables_are_reported(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", "[mesh\nport = 1\n")
    assert "invalid TOML" in check_file(bad)[0].reason
    odd = write(tmp_path / "odd.toml", "[meshh]\nport = 1\n")
    assert "unknown table" in check_file(odd)[0].reason


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    _, problems = collect(None, None, environ={"MESHGATE_PORT": "eighty"})
    assert any(p.file == "environment MESHGATE_PORT" and p.key == "mesh.port" for p in problems)


def test_missing_mcp_servers_and_wrong_shape(tmp_path: Path) -> None:
    assert "missing" in check_file(write(tmp_path / "a.json", {"servers": {}}))[0].reason
    assert "expected" in check_file(write(tmp_path / "b.json", [1]))[0].reason
    assert "cannot read" in check_file(tmp_path / "absent.json")[0].reason


def test_unavailable_modes_and_backends_are_refused_clearly(tmp_path: Path) -> None:
    pol = write(
        tmp_path / "meshgate.toml",
        """
[mesh]
registry = "consul://127.0.0.1:8500"
[defaults]
mode = "exclusive"
""",
    )
    text = "\n".join(str(p) for p in check_file(pol))
    # Consul: meshgate serves Consul's API rather than keeping its registry there.
    assert "mesh.registry: 'consul://127.0.0.1:8500': meshgate does not keep its registry" in text
    assert "Consul-compatible HTTP API" in text
    assert "defaults.mode: unknown mode 'exclusive'; expected shared, sticky or dedicated" in text
    for mode in ("shared", "sticky", "dedicated"):
        ok = write(tmp_path / f"{mode}.toml", f'[defaults]\nmode = "{mode}"\n')
        assert check_file(ok) == []
    _, problems = collect(None, None, environ={"MESHGATE_REGISTRY": "etcd://x"})
    assert "backend 'etcd://x' is not available; use embedded, sqlite:///PATH" in problems[0].reason
    _, problems = collect(None, None, environ={"MESHGATE_QUEUE": "kafka://x"})
    assert [p.file for p in problems] == ["environment MESHGATE_QUEUE"]
    assert "not available; use embedded, redis:// or redis+sentinel://" in problems[0].reason


def test_queue_urls_and_per_target_task_limits(tmp_path: Path) -> None:
    for url in ("embedded", "redis://127.0.0.1:6379/0", "rediss://h:6380/1"):
        settings, problems = collect(None, None, environ={"MESHGATE_QUEUE": url})
        assert problems == [] and settings is not None and settings.mesh.queue == url
    pol = write(
        tmp_path / "meshgate.toml",
        "[defaults]\ntask_concurrency = 4\n[services.api]\ntask_concurrency = 1\n",
    )
    settings, problems = collect(None, pol)
    assert problems == [] and settings is not None
    assert settings.task_limit("api") == 1 and settings.task_limit("other") == 4
    bad = write(tmp_path / "bad.toml", "[defaults]\ntask_concurrency = 0\n")
    assert "defaults.task_concurrency" in str(check_file(bad)[0])


def test_interceptors_are_validated_with_their_position(tmp_path: Path) -> None:
    pol = write(
        tmp_path / "meshgate.toml",
        """
[[mesh.interceptors]]
type = "trace"
[[mesh.interceptors]]
type = "teleport"
[[mesh.interceptors]]
type = "size_limit"
""",
    )
    text = "\n".join(str(p) for p in check_file(pol))
    assert "mesh.interceptors.1" in text and "teleport" in text
    assert "mesh.interceptors.2.size_limit.max_request_bytes" in text
    ok = write(tmp_path / "ok.toml", '[[mesh.interceptors]]\ntype = "caller"\nrequired = true\n')
    assert check_file(ok) == []


def test_http_service_policy_tables_are_validated(tmp_path: Path) -> None:
    pol = write(
        tmp_path / "meshgate.toml",
        "[defaults]\ncall_timeout_s = 5\n[services.a]\nmax_in_flight = 0\n"
        "[services.b]\nretry = {max_attempts = 2}\n",
    )
    text = "\n".join(str(p) for p in check_file(pol))
    assert "services.a.max_in_flight" in text and "services.b" not in text


def test_registry_urls(tmp_path: Path) -> None:
    for url in ("embedded", "sqlite:///tmp/x.sqlite3", "redis://127.0.0.1:6379/0"):
        settings, problems = collect(None, None, environ={"MESHGATE_REGISTRY": url})
        assert problems == [] and settings is not None
    assert settings is not None
    settings, _ = collect(None, None, environ={"MESHGATE_REGISTRY": "sqlite:///tmp/x.sqlite3"})
    assert settings is not None and str(settings.registrations_path) == "/tmp/x.sqlite3"
    _, problems = collect(None, None, environ={"MESHGATE_REGISTRY": "sqlite://"})
    assert "sqlite:///PATH" in problems[0].reason


def test_observability_settings_are_validated(tmp_path: Path) -> None:
    pol = write(
        tmp_path / "meshgate.toml",
        '[mesh]\ntrace_sample_ratio = 2\nlog_format = "xml"\n'
        '[mesh.log_levels]\n"meshgate.router" = "loud"\n',
    )
    text = "\n".join(str(p) for p in check_file(pol))
    assert "mesh.trace_sample_ratio" in text and "mesh.log_format" in text
    assert "mesh.log_levels.meshgate.router" in text
    settings, problems = collect(None, None, environ={"MESHGATE_TRACING": "false"})
    assert problems == [] and settings is not None and settings.mesh.tracing is False
