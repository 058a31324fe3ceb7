"""The API key routes over real HTTP: a small app on uvicorn with the routes alone (to show
each one asks `require` first), and a whole gateway process, beside `meshgate keys`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from meshgate.api import keys as api_keys
from meshgate.api import problems
from meshgate.errors import Forbidden, Unauthenticated
from meshgate.security.keys import Keys
from meshgate.security.keystores import SqliteKeys
from tests.gateway import REPO, run_gateway, serve_app

pytestmark = pytest.mark.timeout(120)

KEYS = "/api/v1/mesh/v2/keys"


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """`app` on uvicorn in a thread of its own, on a port from the OS."""
    with (
        serve_app(app) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def keys_app(store: Keys, *, allowed: bool) -> tuple[FastAPI, list[str]]:
    """The key routes alone, with a `require` that records each call and allows or refuses."""
    asked: list[str] = []

    async def require(request: Request) -> None:
        asked.append(f"{request.method} {request.url.path}")
        if not allowed:
            raise Forbidden("managing API keys needs the 'keys' operation")

    app = FastAPI()
    problems.install(app)
    app.include_router(api_keys.build(store, require))
    return app, asked


def test_create_list_revoke_over_http(tmp_path: Path) -> None:
    store = Keys(SqliteKeys(tmp_path / "keys.sqlite3"))
    app, asked = keys_app(store, allowed=True)
    with serve(app) as http:
        r = http.post(KEYS, json={"name": "ci", "roles": ["deployer"], "expires_in_s": 3600})
        assert r.status_code == 201, r.text
        created = r.json()
        token, key_id = created["key"], created["id"]
        assert token.startswith(f"mgk_{key_id}_")
        assert created["roles"] == ["deployer"] and created["state"] == "active"
        assert created["expires_at"] is not None and "secret_sha256" not in created

        r = http.post(
            KEYS, json={"name": "svc", "service": "billing", "expires_at": "2099-01-01T00:00:00Z"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["expires_at"] == "2099-01-01T00:00:00Z"
        assert r.json()["service"] == "billing"

        listed = http.get(KEYS).json()["items"]
        assert [k["name"] for k in listed] == ["ci", "svc"]
        assert all("key" not in k and "secret_sha256" not in k for k in listed)
        assert token not in json.dumps(listed)

        r = http.delete(f"{KEYS}/{key_id}")
        assert r.status_code == 200 and r.json()["state"] == "revoked"
        r = http.delete(f"{KEYS}/nosuchkey000")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "no API key with id 'nosuchkey000'"
        assert [k["state"] for k in http.get(KEYS).json()["items"]] == ["revoked", "active"]
    assert asked == [
        f"POST {KEYS}",
        f"POST {KEYS}",
        f"GET {KEYS}",
        f"DELETE {KEYS}/{key_id}",
        f"DELETE {KEYS}/nosuchkey000",
        f"GET {KEYS}",
    ]

    async def check() -> None:
        with pytest.raises(Unauthenticated, match="was revoked at"):
            await store.verify(token)
        await store.close()

    asyncio.run(check())


@pytest.mark.parametrize(
    ("body", "status", "problem", "detail"),
    [
        (b"not json", 400, "invalid-input", "request body is not valid JSON"),
        (b"[1]", 400, "invalid-input", "request body must be a JSON object"),
        (b'{"roles": ["admin"]}', 422, "invalid-arguments", "invalid key"),
        (b'{"name": "x", "roles": "admin"}', 422, "invalid-arguments", "invalid key"),
        (b'{"name": "x", "roles": ["admin"], "extra": 1}', 422, "invalid-arguments", "invalid key"),
        (
            b'{"name": "x", "roles": ["admin"], "expires_in_s": 60, "expires_at": 9e9}',
            422,
            "invalid-arguments",
            "invalid key",
        ),
        (
            b'{"name": "x", "roles": ["admin"], "expires_in_s": 0}',
            422,
            "invalid-arguments",
            "invalid key",
        ),
        (
            b'{"name": "x", "roles": ["admin"], "expires_at": "soon"}',
            422,
            "invalid-arguments",
            "expires_at 'soon' is not an RFC 3339 time",
        ),
        (
            b'{"name": "x", "roles": ["admin"], "expires_at": 1000}',
            422,
            "invalid-arguments",
            "expiry 1970-01-01T00:16:40Z is not in the future",
        ),
        (b'{"name": "a b", "roles": ["admin"]}', 422, "invalid-arguments", "key name 'a b'"),
        (b'{"name": "x", "roles": ["a b"]}', 422, "invalid-arguments", "role name 'a b'"),
        (b'{"name": "x", "roles": []}', 422, "invalid-arguments", "a key needs at least one role"),
        (b'{"name": "taken", "roles": ["admin"]}', 409, "conflict", "an active key named 'taken'"),
        (b"{" + b" " * 20000 + b"}", 413, "payload-too-large", "request body of 20002 bytes"),
    ],
)
def test_each_bad_body_gets_a_problem(
    tmp_path: Path, body: bytes, status: int, problem: str, detail: str
) -> None:
    store = Keys(SqliteKeys(tmp_path / "keys.sqlite3"))
    asyncio.run(store.create("taken", ["admin"]))
    app, _ = keys_app(store, allowed=True)
    with serve(app) as http:
        r = http.post(KEYS, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == f"https://meshgate.dev/problems/{problem}"
    assert r.json()["detail"].startswith(detail)


def test_every_route_asks_require_first(tmp_path: Path) -> None:
    store = Keys(SqliteKeys(tmp_path / "keys.sqlite3"))
    _, key = asyncio.run(store.create("alice", ["admin"]))
    app, asked = keys_app(store, allowed=False)
    with serve(app) as http:
        answers = [
            http.post(KEYS, json={"name": "mallory", "roles": ["admin"]}),
            http.get(KEYS),
            http.delete(f"{KEYS}/{key.id}"),
        ]
    assert [r.status_code for r in answers] == [403, 403, 403]
    assert all(r.json()["type"].endswith("/forbidden") for r in answers)
    assert len(asked) == 3
    assert [k.name for k in asyncio.run(store.list())] == ["alice"]  # nothing was done
    assert asyncio.run(store.list())[0].revoked_at is None


def test_a_running_gateway_serves_the_keys_the_command_line_makes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with run_gateway(tmp_path, {}) as gw:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshgate.cli",
                "keys",
                "create",
                "ops",
                "--role",
                "admin",
                "--data-dir",
                str(data),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 0, r.stderr
        made = json.loads(r.stdout)
        listed = gw.get(KEYS).json()["items"]
        assert [(k["id"], k["name"], k["state"]) for k in listed] == [(made["id"], "ops", "active")]

        answer = gw.http.post(KEYS, json={"name": "ci", "roles": ["admin"]})
        assert answer.status_code == 201, answer.text
        assert gw.http.delete(f"{KEYS}/{made['id']}").json()["state"] == "revoked"
        assert {k["name"]: k["state"] for k in gw.get(KEYS).json()["items"]} == {
            "ops": "revoked",
            "ci": "active",
        }
    assert (data / "keys.sqlite3").is_file()
