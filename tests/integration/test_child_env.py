"""MCP server processes see only their configured `env` and a short allow-list of the gateway's
environment, unless policy `inherit_env` or `env_passthrough` says otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshgate.config import ConfigProblems, load
from meshgate.upstream.process import INHERITED_ENV, child_env
from tests.gateway import Gateway, fault_server, run_gateway

pytestmark = pytest.mark.timeout(120)

SECRET = "MESHGATE_TEST_SECRET"
OTHER = "MESHGATE_TEST_OTHER"
GATEWAY_ENV = {
    SECRET: "s3cret-value",
    OTHER: "other-value",
    "npm_config_offline": "true",  # npm's settings pass...
    "npm_config__authToken": "npm-token",  # ...but not its credentials
    "LC_TIME": "C",
}
POLICY = """
[servers.inherit]
inherit_env = true
[servers.chosen]
env_passthrough = ["MESHGATE_TEST_SECRET", "MESHGATE_TEST_UNSET"]
"""


def _env(gw: Gateway, server: str, name: str | None = None) -> Any:
    """The environment names of `server`'s process (JSON list), or one variable's value, or
    None when that variable is not set."""
    r = gw.call(server, "env", {} if name is None else {"name": name})
    assert r.status_code == 200, r.text
    body = r.json()
    text = "".join(c["text"] for c in body["content"])
    if name is None:
        return json.loads(text)
    return None if body.get("isError") else text


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    configured = {**fault_server(), "env": {"CONFIGURED": "from-mcp-json", "LC_TIME": "POSIX"}}
    servers = {"plain": configured, "inherit": fault_server(), "chosen": fault_server()}
    with run_gateway(tmp_path_factory.mktemp("env"), servers, POLICY, env=GATEWAY_ENV) as g:
        yield g


def test_secrets_stay_in_the_gateway_by_default(gw: Gateway) -> None:
    names = set(_env(gw, "plain"))
    assert SECRET not in names and OTHER not in names
    assert "npm_config__authToken" not in names
    # The process started (PATH, PYTHONPATH came through) and sees only what is allowed.
    assert "PATH" in names and "PYTHONPATH" in names
    allowed = {"CONFIGURED", "LC_TIME", "npm_config_offline"} | INHERITED_ENV
    # A Python interpreter may add a few of its own (LC_CTYPE when it coerces the C locale).
    assert names - allowed <= {"LC_CTYPE"}, names - allowed
    # MESHGATE_DATA_DIR and the like, set by the test harness for the gateway, stay out too.
    assert not {n for n in names if n.startswith("MESHGATE_")}


def test_configured_env_is_present_and_wins(gw: Gateway) -> None:
    assert _env(gw, "plain", "CONFIGURED") == "from-mcp-json"
    assert _env(gw, "plain", "LC_TIME") == "POSIX"  # over the gateway's "C"
    assert _env(gw, "plain", "npm_config_offline") == "true"
    assert _env(gw, "inherit", "CONFIGURED") is None  # one server's env is not another's


def test_inherit_env_gives_the_whole_environment(gw: Gateway) -> None:
    assert _env(gw, "inherit", SECRET) == "s3cret-value"
    assert _env(gw, "inherit", OTHER) == "other-value"
    assert _env(gw, "inherit", "npm_config__authToken") == "npm-token"
    assert _env(gw, "inherit", "LC_TIME") == "C"


def test_env_passthrough_passes_exactly_the_named_variables(gw: Gateway) -> None:
    assert _env(gw, "chosen", SECRET) == "s3cret-value"
    names = set(_env(gw, "chosen"))
    assert OTHER not in names and "npm_config__authToken" not in names
    assert "MESHGATE_TEST_UNSET" not in names  # named but not set in the gateway: skipped
    assert names - set(_env(gw, "plain")) <= {SECRET}


def test_child_env_filters_credential_like_npm_settings() -> None:
    environ = {
        "PATH": "/bin",
        "npm_config_cache": "/c",
        "NPM_CONFIG_REGISTRY": "http://127.0.0.1:1",
        "npm_config__auth": "x",
        "npm_config_//registry.npmjs.org/:_authToken": "x",
        "npm_config__password": "x",
        "npm_config_email": "x",
        "UV_PUBLISH_TOKEN": "x",
        "UV_INDEX_URL": "https://user:pw@example.invalid/simple",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    assert child_env({"A": "1"}, environ=environ) == {
        "PATH": "/bin",
        "npm_config_cache": "/c",
        "NPM_CONFIG_REGISTRY": "http://127.0.0.1:1",
        "A": "1",
    }
    assert child_env({}, passthrough=["UV_INDEX_URL"], environ=environ)["UV_INDEX_URL"]
    assert child_env({}, inherit_env=True, environ=environ) == environ


@pytest.mark.parametrize("bad", ['""', '"A=B"'])
def test_env_passthrough_refuses_what_is_not_a_variable_name(tmp_path: Path, bad: str) -> None:
    config = tmp_path / ".mcp.json"
    config.write_text('{"mcpServers": {}}')
    policy = tmp_path / "meshgate.toml"
    policy.write_text(f"[defaults]\nenv_passthrough = [{bad}]\n")
    with pytest.raises(ConfigProblems) as e:
        load(config, policy, environ={})
    assert "defaults.env_passthrough" in str(e.value)
    assert "not environment variable names" in str(e.value)
