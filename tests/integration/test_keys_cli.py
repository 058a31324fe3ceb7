"""`meshgate keys` run as a command, on an SQLite file and on a real redis-server, read as a
newcomer reads it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshgate.security.keys import Keys
from meshgate.security.keystores import RedisKeys, SqliteKeys
from meshgate.testing.redis_server import RedisServer
from tests.gateway import REPO

pytestmark = pytest.mark.timeout(120)

POLICY = '[auth]\napi_keys = true\n\n[roles.reader]\nallow = ["mcp:*"]\n'


def keys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`meshgate keys ARGS` in `tmp_path`, its data dir `tmp_path/data` unless ARGS name one."""
    where = () if "--data-dir" in args or "--registry" in args else ("--data-dir", "data")
    return subprocess.run(
        [sys.executable, "-m", "meshgate.cli", "keys", *args, *where],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


def test_create_prints_the_key_once_with_how_to_use_it(tmp_path: Path) -> None:
    (tmp_path / "meshgate.toml").write_text(POLICY)
    r = keys(tmp_path, "create", "ci-deploy", "--role", "reader", "--expires", "30d")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # the role is defined and [auth] is on: nothing to warn of
    tokens = re.findall(r"mgk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{43}", r.stdout)
    assert len(tokens) == 1
    key_id = tokens[0][4:16]
    lines = r.stdout.splitlines()
    assert lines[0].startswith(
        f"Created API key {key_id} for 'ci-deploy' (roles: reader; expires: "
    )
    assert lines[0].endswith(f"in {tmp_path / 'data' / 'keys.sqlite3'}:")
    assert f"    {tokens[0]}" in lines
    assert lines[-1] == (
        "It cannot be shown again: store it now. Send it with each request as "
        "`Authorization: Bearer <key>` (or `X-API-Key: <key>`)."
    )

    async def verify() -> None:
        store = Keys(SqliteKeys(tmp_path / "data" / "keys.sqlite3"))
        principal = await store.verify(tokens[0])
        assert principal.name == "ci-deploy" and principal.roles == {"reader"}
        await store.close()

    asyncio.run(verify())


def test_create_warns_of_what_the_key_will_not_do_yet(tmp_path: Path) -> None:
    r = keys(tmp_path, "create", "bob", "--role", "writer", "--role", "admin")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "warning: role 'writer' is neither the built-in 'admin' nor defined as [roles.writer] "
        "(no meshgate.toml was found): the key gets no rights from it until it is",
        "warning: authentication is off (no meshgate.toml was found): the gateway asks for no "
        "key, and serves loopback only, until [auth] turns it on",
    ]
    (tmp_path / "meshgate.toml").write_text('[roles.reader]\nallow = ["mcp:*"]\n')
    r = keys(tmp_path, "create", "carol", "--role", "writer", "--role", "reader")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "warning: role 'writer' is neither the built-in 'admin' nor defined as [roles.writer] "
        "in meshgate.toml: the key gets no rights from it until it is",
        "warning: authentication is off (no [auth] in meshgate.toml): the "
        "gateway asks for no key, and serves loopback only, until [auth] turns it on",
    ]


def test_list_shows_every_state_and_never_a_secret(tmp_path: Path) -> None:
    r = keys(tmp_path, "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "No API keys yet. Make the first with: meshgate keys create NAME --role admin\n"
    )
    made = json.loads(keys(tmp_path, "create", "alice", "--role", "admin", "--json").stdout)
    assert made["key"].startswith(f"mgk_{made['id']}_") and made["state"] == "active"
    gone = json.loads(keys(tmp_path, "create", "old", "--role", "admin", "--json").stdout)
    svc = json.loads(keys(tmp_path, "create", "billing", "--service", "billing", "--json").stdout)

    async def expired() -> None:  # made an hour ago, for half an hour
        now = time.time()
        store = Keys(SqliteKeys(tmp_path / "data" / "keys.sqlite3"), clock=lambda: now - 3600)
        await store.create("temp", ["reader"], expires_at=now - 1800)
        await store.close()

    asyncio.run(expired())
    r = keys(tmp_path, "revoke", gone["id"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        f"Revoked API key {gone['id']} (old). Running gateways refuse it within 5 s.\n"
    )
    r = keys(tmp_path, "revoke", gone["id"])
    assert r.returncode == 0
    assert r.stdout.startswith(f"API key {gone['id']} (old) was already revoked at 20")

    r = keys(tmp_path, "list")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0] == ["ID", "NAME", "ROLES", "SERVICE", "CREATED", "EXPIRES", "STATE"]
    by_name = {row[1]: row for row in rows[1:]}
    assert by_name["alice"][0] == made["id"]
    assert by_name["alice"][2:4] == ["admin", "-"]
    assert by_name["alice"][5:] == ["never", "active"]
    assert by_name["old"][-1] == "revoked"
    assert by_name["billing"][2:4] == ["-", "billing"] and by_name["billing"][0] == svc["id"]
    assert by_name["temp"][-1] == "expired"
    assert "mgk_" not in r.stdout

    listed = json.loads(keys(tmp_path, "list", "--json").stdout)["items"]
    assert {k["name"]: k["state"] for k in listed} == {
        "alice": "active",
        "old": "revoked",
        "billing": "active",
        "temp": "expired",
    }
    assert all("key" not in k and "secret_sha256" not in k for k in listed)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("create", "x", "--role", "admin", "--expires", "3q"),
            2,
            "error: expiry '3q' is neither a duration (90s, 30m, 12h, 30d, 2w) nor a time "
            "(2027-01-01T00:00:00Z, 2027-01-01)",
        ),
        (
            ("create", "x", "--role", "admin", "--expires", "2020-01-01"),
            2,
            "error: expiry 2020-01-01T00:00:00Z is not in the future",
        ),
        (
            ("create", "x"),
            2,
            "error: give the key a role: --role admin (every right) or a role defined as "
            "[roles.NAME] in meshgate.toml",
        ),
        (
            ("create", "x", "--role", "no/slash"),
            2,
            "error: role name 'no/slash': 1 to 64 of A-Z a-z 0-9 _ . : -",
        ),
        (
            ("create", "x y", "--role", "admin"),
            2,
            "error: key name 'x y': 1 to 128 of A-Z a-z 0-9 _ . @ : + -, starting with a "
            "letter or digit",
        ),
        (
            ("revoke", "nosuchkey000"),
            1,
            "error: no API key with id 'nosuchkey000' (`meshgate keys list` shows them)",
        ),
        (
            ("list", "--data-dir", ""),
            2,
            "error: the data dir is set to '' (memory only): keys made here would be lost; "
            "name a --data-dir, or a redis:// --registry",
        ),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    r = keys(tmp_path, *args)
    assert r.returncode == code, r.stdout + r.stderr
    assert message in r.stderr.splitlines()
    assert "Traceback" not in r.stderr and "mgk_" not in r.stdout


def test_a_duplicate_name_and_an_unwritable_store_are_refused(tmp_path: Path) -> None:
    assert keys(tmp_path, "create", "alice", "--role", "admin").returncode == 0
    r = keys(tmp_path, "create", "alice", "--role", "admin")
    assert r.returncode == 1
    assert "error: an active key named 'alice' exists" in r.stderr and "mgk_" not in r.stdout
    (tmp_path / "file").write_text("")
    r = keys(tmp_path, "list", "--data-dir", str(tmp_path / "file" / "data"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: the directory of the API key database")


def test_keys_made_on_the_command_line_live_in_the_shared_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    made = keys(
        tmp_path, "create", "ci", "--role", "admin", "--registry", redis_server.url, "--json"
    )
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["key"]
    listed = keys(tmp_path, "list", "--registry", redis_server.url)
    assert "ci" in listed.stdout and "active" in listed.stdout
    assert not (tmp_path / "data").exists()  # nothing written beside the shared store

    async def verify() -> None:
        store = Keys(RedisKeys(redis_server.url))
        assert (await store.verify(token)).name == "ci"
        await store.close()

    asyncio.run(verify())
