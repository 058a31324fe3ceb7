"""A stand-in for Kong's Admin API, for tests of the Kong sync (Kong cannot run here): an ASGI
app keeping upstreams and targets in memory, with only the endpoints the sync uses, as Kong
3.x documents them:

- `GET /upstreams/{name or id}`: 200 the upstream, 404 `{"message": "Not found"}`
- `PUT /upstreams/{name or id}`: create or replace (idempotent), 200 with the upstream
  (Kong's defaults filled in); a `name` in the body that differs from the path's is a 400
- `GET /upstreams/{upstream}/targets`: 200 `{"data": [...], "next": PATH or null}`, paged by
  `size` (default 100) and `offset`
- `POST /upstreams/{upstream}/targets`: `{"target": "host[:port]", "weight": N}` (port 8000
  and weight 100 by default), 201 the target; 409 for a target the upstream has already
- `DELETE /upstreams/{upstream}/targets/{host:port or id}`: 204; 404 when there is none

Errors are Kong's shape, `{"message": ...}`. For tests: `fail_with` makes every request answer
that status (500: an Admin API in trouble) until cleared, `token` demands a
`Kong-Admin-Token` header, and `requests` records what was asked (method and path).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

WRITES = ("PUT", "POST", "PATCH", "DELETE")


def _check_defaults() -> dict[str, Any]:
    """Kong's defaults of an upstream's `healthchecks` (what GET shows when none were given)."""
    return {
        "active": {
            "type": "http",
            "http_path": "/",
            "timeout": 1,
            "concurrency": 10,
            "https_verify_certificate": True,
            "headers": None,
            "healthy": {"interval": 0, "successes": 0, "http_statuses": [200, 302]},
            "unhealthy": {
                "interval": 0,
                "http_failures": 0,
                "tcp_failures": 0,
                "timeouts": 0,
                "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
            },
        },
        "passive": {
            "type": "http",
            "healthy": {"successes": 0, "http_statuses": [200, 201, 202, 203, 204, 205]},
            "unhealthy": {"http_failures": 0, "tcp_failures": 0, "timeouts": 0},
        },
        "threshold": 0,
    }


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


class KongAdmin:
    """The stand-in's state and its ASGI app (`app`)."""

    def __init__(self, *, page_size: int = 100, token: str | None = None) -> None:
        self.upstreams: dict[str, dict[str, Any]] = {}  # by id
        self.targets: dict[str, list[dict[str, Any]]] = {}  # by upstream id, in creation order
        self.page_size = page_size
        self.token = token
        self.fail_with: int | None = None
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()  # the app runs on a server's thread, tests read on theirs
        self.app = Starlette(
            routes=[
                Route("/upstreams/{upstream}", self._upstream, methods=["GET", "PUT"]),
                Route("/upstreams/{upstream}/targets", self._targets, methods=["GET", "POST"]),
                Route("/upstreams/{upstream}/targets/{target}", self._target, methods=["DELETE"]),
            ]
        )
        self.app.add_middleware(_Gate, admin=self)

    # -- what tests read -------------------------------------------------------------------------

    def upstream(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._find(name)
            return copy.deepcopy(found) if found is not None else None

    def target_weights(self, name: str) -> dict[str, int] | None:
        """An upstream's targets as {host:port: weight}; None when there is no such upstream."""
        with self._lock:
            found = self._find(name)
            if found is None:
                return None
            return {t["target"]: t["weight"] for t in self.targets[found["id"]]}

    def remove_target(self, name: str, target: str) -> None:
        """Take a target out, as an operator would by hand."""
        with self._lock:
            found = self._find(name)
            assert found is not None, name
            self.targets[found["id"]] = [
                t for t in self.targets[found["id"]] if t["target"] != target
            ]

    def writes(self) -> list[tuple[str, str]]:
        with self._lock:
            return [r for r in self.requests if r[0] in WRITES]

    # -- the endpoints -------------------------------------------------------------------------

    def _find(self, ref: str) -> dict[str, Any] | None:
        if ref in self.upstreams:
            return self.upstreams[ref]
        return next((u for u in self.upstreams.values() if u["name"] == ref), None)

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _message(400, "Cannot parse JSON body")
        if not isinstance(body, dict):
            return _message(400, "Cannot parse JSON body")
        return body

    async def _upstream(self, request: Request) -> Response:
        ref = request.path_params["upstream"]
        if request.method == "GET":
            with self._lock:
                found = self._find(ref)
                return JSONResponse(copy.deepcopy(found)) if found else _message(404, "Not found")
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if body.get("name", ref) != ref:
            return JSONResponse(
                {
                    "message": "schema violation (name: must equal the name in the URL)",
                    "name": "schema violation",
                    "fields": {"name": "must equal the name in the URL"},
                    "code": 2,
                },
                status_code=400,
            )
        with self._lock:
            found = self._find(ref)
            entity = {
                "id": found["id"] if found else str(uuid.uuid4()),
                "created_at": found["created_at"] if found else int(time.time()),
                "updated_at": int(time.time()),
                "name": ref,
                "algorithm": "round-robin",
                "hash_on": "none",
                "hash_fallback": "none",
                "slots": 10000,
                "tags": None,
                "host_header": None,
                "client_certificate": None,
                "use_srv_name": False,
                **{k: v for k, v in body.items() if k != "healthchecks"},
                "healthchecks": _merged(_check_defaults(), body.get("healthchecks") or {}),
            }
            self.upstreams[entity["id"]] = entity
            self.targets.setdefault(entity["id"], [])
            return JSONResponse(copy.deepcopy(entity))

    async def _targets(self, request: Request) -> Response:
        with self._lock:
            upstream = self._find(request.path_params["upstream"])
        if upstream is None:
            return _message(404, "Not found")
        if request.method == "GET":
            try:
                size = int(request.query_params.get("size", self.page_size))
                offset = int(request.query_params.get("offset", "0"))
            except ValueError:
                return _message(400, "invalid size or offset")
            with self._lock:
                rows = self.targets[upstream["id"]]
                page = copy.deepcopy(rows[offset : offset + size])
                more = offset + size < len(rows)
            following = (
                f"/upstreams/{upstream['name']}/targets?offset={offset + size}&size={size}"
                if more
                else None
            )
            return JSONResponse({"data": page, "next": following})
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        target = body.get("target")
        weight = body.get("weight", 100)
        if not isinstance(target, str) or not target:
            return _message(400, "schema violation (target: required field missing)")
        if not isinstance(weight, int) or not 0 <= weight <= 65535:
            return _message(400, "schema violation (weight: value should be between 0 and 65535)")
        if target.count(":") == 0:
            target += ":8000"
        with self._lock:
            rows = self.targets[upstream["id"]]
            if any(t["target"] == target for t in rows):
                return JSONResponse(
                    {
                        "message": f"UNIQUE violation detected on '{{target=\"{target}\"}}'",
                        "name": "unique constraint violation",
                        "code": 5,
                    },
                    status_code=409,
                )
            entity = {
                "id": str(uuid.uuid4()),
                "created_at": time.time(),
                "updated_at": time.time(),
                "upstream": {"id": upstream["id"]},
                "target": target,
                "weight": weight,
                "tags": body.get("tags"),
            }
            rows.append(entity)
        return JSONResponse(entity, status_code=201)

    async def _target(self, request: Request) -> Response:
        ref = request.path_params["target"]
        with self._lock:
            upstream = self._find(request.path_params["upstream"])
            if upstream is None:
                return _message(404, "Not found")
            rows = self.targets[upstream["id"]]
            kept = [t for t in rows if ref not in (t["target"], t["id"])]
            if len(kept) == len(rows):
                return _message(404, "Not found")
            self.targets[upstream["id"]] = kept
        return Response(status_code=204)


class _Gate:
    """Records each request, then answers `fail_with` or 401 without the token, if so set."""

    def __init__(self, app: Any, admin: KongAdmin) -> None:
        self.app = app
        self.admin = admin

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admin = self.admin
        with admin._lock:
            admin.requests.append((scope["method"], scope["path"]))
        if admin.fail_with is not None:
            response: Response = _message(admin.fail_with, "An unexpected error occurred")
            await response(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if admin.token is not None and headers.get("kong-admin-token") != admin.token:
            response = _message(401, "Invalid credentials. Token or User credentials required")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


__all__ = ["WRITES", "KongAdmin"]
