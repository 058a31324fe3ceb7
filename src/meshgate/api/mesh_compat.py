"""The paths only the older `/api/v1/mesh/v2` API has (docs/api.md, "The older mesh API"):
`/deregister/{id}`, `/discover/{name}`, `/call`, `/results` and `/configure/...`. Each does its
work through the same parts as meshgate's own routes: the gate, the router's one call path, the
task queue, the registry's run-time policy."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from meshgate.api import old_shapes
from meshgate.api.auth import requires
from meshgate.api.forwarding import climbs, is_forwarding_header
from meshgate.api.mesh import owner_elsewhere, remove_instance
from meshgate.api.mesh_views import MeshViews
from meshgate.api.node_relay import NodeRelay
from meshgate.api.openapi import json_body, problems
from meshgate.api.problems import DEFAULT_MAX_JSON_DEPTH, read_json_object
from meshgate.api.proxying import CREDENTIAL_HEADERS, NOT_FORWARDED
from meshgate.api.redaction import for_caller
from meshgate.api.responses import json_response
from meshgate.balancer import STRATEGIES
from meshgate.config import SERVICE_NAME
from meshgate.config.topics import TaskSettings
from meshgate.errors import InvalidArguments, InvalidInput, NotFound, PayloadTooLarge, UpstreamError
from meshgate.observability import tracing
from meshgate.observability.audit import audit
from meshgate.router import hash_key
from meshgate.router.call import CALLER_HEADER, HOPS_HEADER, Call, parse_hops
from meshgate.router.overrides import RuntimePolicy
from meshgate.security import Principal, principal_of
from meshgate.security.policy import Action
from meshgate.services.http import ServiceResponse
from meshgate.tasks.base import FINAL, timestamp
from meshgate.tasks.workers import Workers

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
RESULTS_PAGE = 1000


class OldCall(BaseModel):
    """`POST /call`: one request to an HTTP service, its answer in the response body."""

    model_config = ConfigDict(extra="ignore")  # as the older API did

    service_name: str = Field(pattern=SERVICE_NAME)
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    timeout: float = Field(30.0, gt=0, le=300)
    retry_count: int = Field(3, ge=0, le=10)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value.upper() not in METHODS:
            raise ValueError(f"must be one of {', '.join(METHODS)}")
        return value.upper()

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


def build(
    views: MeshViews,
    workers: Workers,
    policy: RuntimePolicy,
    *,
    topics: TaskSettings,
    max_body_bytes: int,
    max_hops: int = 8,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    relay: NodeRelay | None = None,
) -> APIRouter:
    api = APIRouter(prefix="/api/v1/mesh/v2", tags=["mesh"])
    router, services = views.router, views.services

    @api.delete(
        "/deregister/{service_id}",
        summary="Deregister an HTTP service instance by its id (the older API's form)",
        responses=problems(404, 422, 503),
    )
    async def deregister(request: Request, service_id: str) -> Response:
        inst = services.instances.get(service_id)
        if inst is None:
            owned = owner_elsewhere(relay, request, service_id)
            if owned is not None:  # another node's: deregistered there, its answer relayed
                relayed = await remove_instance(request, views, owned[0].service, service_id, relay)
                if relayed is not None:
                    return relayed
            await router.gate.admit(principal_of(request.scope), Action.mesh("deregister"))
            raise NotFound(f"no instance {service_id!r} registered at this node")
        await remove_instance(request, views, inst.service, service_id)
        return json_response(
            {"status": "deregistered", "message": f"instance {service_id} deregistered"}
        )

    @api.get(
        "/discover/{service_name}",
        summary="The instances of one service, each at host:port (the older API's form)",
        dependencies=[requires("discover")],
        responses=problems(404),
    )
    async def discover(request: Request, service_name: str) -> Response:
        view = views.one(service_name)
        if view is None:
            raise old_shapes.unknown_service(service_name)
        instances = [
            {
                "id": i["id"],
                "address": old_shapes.address(i.get("url")),
                "state": i["state"],
                "tags": i.get("tags") or [],
                "metadata": i.get("metadata") or {},
                "kind": view["kind"],
            }
            for i in view["instances"]
        ]
        body = {
            "service_name": service_name,
            "kind": view["kind"],
            "instances": instances,
            "total": len(instances),
            "healthy": sum(i["state"] == "healthy" for i in instances),
        }
        return json_response(for_caller(request, body))

    @api.post(
        "/call",
        summary="Call an HTTP service through the router; its answer in a JSON body",
        responses=problems(400, 404, 413, 422, 502, 503, 504, 508),
        openapi_extra=json_body(OldCall),
    )
    async def call(request: Request) -> Response:
        req = old_shapes.validated(
            OldCall, await read_json_object(request, max_body_bytes, max_json_depth), "invalid call"
        )
        path, _, query = req.path.partition("?")
        if ("." in path or "%" in path or "\\" in path) and climbs(path):
            raise InvalidInput("the path has a '.' or '..' segment; it could leave the service")
        content, media = _content(req.body)
        if len(content) > max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {len(content)} bytes exceeds the limit of {max_body_bytes}"
            )
        pool = services.pools.get(req.service_name)
        keep_credentials = not router.gate.enabled or (
            pool is not None and pool.policy.forward_credentials
        )
        headers = [
            (k.lower(), v)
            for k, v in req.headers.items()
            if k.lower() not in NOT_FORWARDED
            and not is_forwarding_header(k.lower())
            and (keep_credentials or k.lower() not in CREDENTIAL_HEADERS)
        ]
        if media and not any(k == "content-type" for k, _ in headers):
            headers.append(("content-type", media))
        client = request.client.host if request.client else None
        incoming = request.headers
        call = Call(
            service=req.service_name,
            kind="http",
            target=path,
            entry="proxy",
            incoming=incoming,
            caller=incoming.get(CALLER_HEADER),
            body_size=len(content),
            timeout_s=req.timeout,
            hops=parse_hops(incoming.get(HOPS_HEADER), max_hops=max_hops),
            client=client,
            method=req.method,
            principal=principal_of(request.scope),
        )
        key = (
            hash_key(pool, session=None, client=client, arguments={})
            if pool is not None and pool.policy.strategy in ("consistent_hash", "ip_hash")
            else None
        )
        chosen: list[str] = []
        started = time.perf_counter()
        upstream = await router.proxy(
            req.service_name,
            req.method,
            path,
            call=call,
            query=query,
            headers=headers,
            body=content,
            key=key,
            on_instance=lambda inst: chosen.append(inst.id),
        )
        try:
            data = await _read(upstream, max_body_bytes)
        finally:
            upstream.close()
        ids = tracing.current_ids()
        returned = _headers(upstream)
        answer = {
            "status_code": upstream.status_code,
            "headers": returned,
            "body": _decoded(data, returned.get("content-type", "")),
            "instance_id": chosen[-1] if chosen else None,
            "trace_id": ids[0] if ids else secrets.token_hex(16),
            "duration": round(time.perf_counter() - started, 6),
        }
        return json_response(answer)

    @api.get(
        "/results",
        summary="The newest finished tasks of a topic with their results (the older API's form)",
        responses=problems(422, 503),
    )
    async def results(request: Request, topic: str, count: int = 10) -> Response:
        if not 1 <= count <= 100:
            raise InvalidArguments("count must be between 1 and 100")
        old_shapes.topic_target(topics, topic, "topic")
        owner, after, found = old_shapes.topic_owner(topic), "", []
        while True:
            page = await workers.store.list(None, after, RESULTS_PAGE, owner=owner)
            found += [t for t in page if t["status"] in FINAL and _may_read(request, t)]
            if len(page) < RESULTS_PAGE:
                break
            after = str(page[-1]["id"])
        found.sort(key=lambda t: (t.get("finished_at") or 0, t["id"]), reverse=True)
        items = [
            {
                "id": t["id"],
                "data": t.get("result"),
                "status": t["status"],
                "error": t.get("error"),
                "finished_at": timestamp(t["finished_at"]) if t.get("finished_at") else None,
            }
            for t in found[:count]
        ]
        return json_response(items)

    def _may_read(request: Request, task: dict[str, Any]) -> bool:
        principal, gate = principal_of(request.scope), router.gate
        if not gate.enabled or gate.allows(principal, Action.mesh("tasks.read")):
            return True
        owner = Principal.from_json((task.get("target") or {}).get("principal"))
        return owner.name == principal.name and owner.via == principal.via

    @api.post(
        "/configure/load-balancer",
        summary="Set every service's load-balancing strategy at run time (kept over restarts)",
        dependencies=[requires("admin")],
        responses=problems(422, 503),
    )
    async def load_balancer(request: Request, strategy: str | None = None) -> Response:
        if strategy not in STRATEGIES:
            raise InvalidArguments(
                f"strategy must be one of {', '.join(STRATEGIES)}",
                extra={"errors": [{"loc": ["query", "strategy"], "msg": "unknown strategy"}]},
            )
        await policy.set(strategy=strategy)
        who = principal_of(request.scope).name
        audit("configure", principal=who, outcome="ok", **policy.values)
        return json_response({"status": "configured", "strategy": strategy})

    @api.post(
        "/configure/circuit-breaker",
        summary="Set every circuit breaker's threshold and recovery time at run time",
        dependencies=[requires("admin")],
        responses=problems(422, 503),
    )
    async def circuit_breaker(
        request: Request, failure_threshold: int = 5, recovery_timeout: int = 60
    ) -> Response:
        if not 1 <= failure_threshold <= 100:
            raise InvalidArguments("failure_threshold must be between 1 and 100")
        if not 1 <= recovery_timeout <= 3600:
            raise InvalidArguments("recovery_timeout must be between 1 and 3600 seconds")
        await policy.set(failure_threshold=failure_threshold, recovery_timeout=recovery_timeout)
        who = principal_of(request.scope).name
        audit("configure", principal=who, outcome="ok", **policy.values)
        return json_response(
            {
                "status": "configured",
                "failure_threshold": failure_threshold,
                "recovery_timeout": recovery_timeout,
            }
        )

    return api


def _content(body: Any) -> tuple[bytes, str | None]:
    """The request body to send, and its media type unless the caller gave one: a string as
    text, any other JSON value as JSON, none as nothing."""
    if body is None:
        return b"", None
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


async def _read(upstream: ServiceResponse, limit: int) -> bytes:
    """The whole answer, which must fit in a JSON body of the gateway's size limit."""
    data = bytearray()
    async for chunk in upstream.chunks():
        data += chunk
        if len(data) > limit:
            raise UpstreamError(
                f"the service's answer exceeds {limit} bytes (mesh.max_body_bytes); call it "
                "through /call/{name}/{path}, which streams"
            )
    return bytes(data)


def _headers(upstream: ServiceResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in upstream.raw_headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in NOT_FORWARDED:
            continue
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _decoded(data: bytes, media: str) -> Any:
    """A JSON answer as its value, any other as text; an empty one as null."""
    if not data:
        return None
    if "json" in media.lower():
        try:
            return json.loads(data)
        except ValueError:
            pass
    return data.decode("utf-8", errors="replace")
