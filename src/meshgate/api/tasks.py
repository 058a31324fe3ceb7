"""The task API (`/api/v1/mesh/v2`): enqueue, look up, wait for, cancel, list and retry tasks."""

from __future__ import annotations

import json
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from meshgate.api import old_shapes
from meshgate.api.openapi import json_body, ok, problems
from meshgate.api.problems import DEFAULT_MAX_JSON_DEPTH, read_json_object
from meshgate.api.responses import json_response
from meshgate.config.topics import TaskSettings
from meshgate.errors import InvalidArguments, NotFound, UnknownService, UnknownTool
from meshgate.observability import tracing
from meshgate.router import Router
from meshgate.router.call import CALLER_HEADER, Call
from meshgate.security import Principal, principal_of
from meshgate.security.policy import Action
from meshgate.tasks.base import FINAL, page, view
from meshgate.tasks.workers import Workers


class ToolTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class HttpTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = "/"
    body: Any = None


class Enqueue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: ToolTarget | HttpTarget
    priority: int = Field(0, ge=-1000, le=1000)
    max_attempts: int = Field(3, ge=1, le=100)
    deadline_s: float | None = Field(None, gt=0, le=7 * 86400)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    callback_url: str | None = None

    @model_validator(mode="after")
    def _callback(self) -> Enqueue:
        if self.callback_url is not None:
            parts = urlsplit(self.callback_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("callback_url must be an http:// or https:// URL")
        if isinstance(self.target, HttpTarget) and not self.target.path.startswith("/"):
            raise ValueError("target.path must start with '/'")
        return self


def build(
    router: Router,
    workers: Workers,
    *,
    max_body_bytes: int,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    topics: TaskSettings | None = None,
) -> APIRouter:
    api = APIRouter(prefix="/api/v1/mesh/v2", tags=["tasks"])
    topics = topics or TaskSettings()
    store = workers.store

    def check_target(target: ToolTarget | HttpTarget) -> str:
        """Refuse at enqueue time what could never run."""
        if isinstance(target, ToolTarget):
            pool = router.pool(target.server)  # UnknownService
            if pool.tools and target.tool not in pool.tools:
                raise UnknownTool(f"{target.server} has no tool named {target.tool!r}")
            return target.server
        services = router.services
        if services is None or target.service not in services.pools:
            raise UnknownService(f"no HTTP service named {target.service!r}")
        return target.service

    @api.post(
        "/enqueue",
        summary="Enqueue a task; 202 once it is durably stored",
        status_code=202,
        responses={
            200: ok("Enqueued, for a body of the older API"),
            **problems(400, 404, 413, 422, 503),
        },
        openapi_extra=json_body(Enqueue, old_shapes.OldTopicTask, old_shapes.OldTypedTask),
    )
    async def enqueue(request: Request) -> Response:
        body = await read_json_object(request, max_body_bytes, max_json_depth)
        # The older API's bodies name a configured topic instead of a target.
        old = old_shapes.old_task(body, topics) if old_shapes.is_old_task(body) else None
        req = old_shapes.validated(Enqueue, old.body if old else body, "invalid task")
        target = req.target.model_dump()
        # Identity and policy are checked when a task is accepted, and again when it runs,
        # with the rights of the principal that enqueued it (kept with the task).
        is_tool = isinstance(req.target, ToolTarget)
        principal = principal_of(request.scope)
        await router.gate.admit(principal, Action.mesh("enqueue"))
        call = await router.admit(
            Call(
                service=target["server"] if is_tool else target["service"],
                kind="mcp" if is_tool else "http",
                target=target["tool"] if is_tool else target["path"],
                entry="enqueue",
                incoming=request.headers,
                caller=request.headers.get(CALLER_HEADER),
                arguments=target.get("arguments") if is_tool else None,
                body_size=0 if is_tool else len(json.dumps(target.get("body"))),
                method="tools/call" if is_tool else target["method"],
                principal=principal,
            )
        )
        name = check_target(req.target)
        if call.caller:
            target["caller"] = call.caller
        target["principal"] = principal.to_json()
        if req.callback_url:
            target["callback_url"] = req.callback_url
        if tracing.active() is not None:  # the task's spans join this request's trace
            target["trace"] = tracing.inject()
        task_id, created = await store.enqueue(
            target,
            name,
            priority=req.priority,
            max_attempts=req.max_attempts,
            deadline_s=req.deadline_s,
            idempotency_key=req.idempotency_key,
            owner=old.owner if old else None,
        )
        workers.wake()
        if old:
            return json_response(old.reply(task_id))
        return json_response({"task_id": task_id, "created": created}, 202)

    async def own_task(request: Request, task_id: str, operation: str) -> dict[str, Any]:
        """The task, if the caller may see it: its own (enqueued by the same principal), or
        any with the `tasks.read` / `tasks.cancel` operation. Someone else's task is "not
        found", as one that does not exist: ids are not confirmed to whoever guesses them."""
        task = await store.get(task_id)
        if task is not None and not may_touch(request, task, operation):
            task = None
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        return task

    def may_touch(request: Request, task: dict[str, Any], operation: str) -> bool:
        principal = principal_of(request.scope)
        gate = router.gate
        if not gate.enabled or gate.allows(principal, Action.mesh(operation)):
            return True
        owner = Principal.from_json((task.get("target") or {}).get("principal"))
        return owner.name == principal.name and owner.via == principal.via

    @api.get(
        "/task/{task_id}",
        summary="A task; wait_s long-polls until it is final",
        responses=problems(404, 422, 503),
    )
    async def get_task(request: Request, task_id: str, wait_s: float = 0) -> Response:
        if not 0 <= wait_s <= 300:
            raise InvalidArguments("wait_s must be between 0 and 300")
        end = time.monotonic() + wait_s
        task: dict[str, Any] | None = await own_task(request, task_id, "tasks.read")
        while task is not None and task["status"] not in FINAL and time.monotonic() < end:
            await workers.changed(min(1.0, end - time.monotonic()))
            task = await store.get(task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        return json_response(view(task))

    @api.delete(
        "/task/{task_id}",
        summary="Cancel a task (a running MCP call is cancelled too)",
        responses=problems(404, 503),
    )
    async def cancel_task(request: Request, task_id: str) -> Response:
        await own_task(request, task_id, "tasks.cancel")
        before = await workers.cancel(task_id)
        if before is None:
            raise NotFound(f"no task {task_id!r}")
        task = await store.get(task_id)
        assert task is not None
        return json_response({**view(task), "was": before})

    @api.post(
        "/task/{task_id}/retry",
        summary="Queue a dead or failed task again",
        status_code=202,
        responses=problems(404, 422, 503),
    )
    async def retry_task(request: Request, task_id: str) -> Response:
        await own_task(request, task_id, "tasks.cancel")
        if not await store.retry_dead(task_id):
            raise InvalidArguments("only a dead or failed task can be retried")
        task = await store.get(task_id)  # read before waking the workers: still queued, here
        assert task is not None
        workers.wake()
        return json_response(view(task), 202)

    @api.get(
        "/tasks",
        summary="Tasks, by id, with a status filter and cursor pagination",
        responses=problems(422, 503),
    )
    async def list_tasks(
        request: Request, status: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> Response:
        """Every task for callers with `tasks.read`; a page of one's own tasks otherwise
        (a page may then hold fewer than `limit` items while `next_cursor` goes on)."""
        if status is not None and status not in ("queued", "running", *FINAL):
            raise InvalidArguments(f"unknown status {status!r}")
        if not 1 <= limit <= 1000:
            raise InvalidArguments("limit must be between 1 and 1000")
        try:
            items, next_cursor = await page(store, cursor, limit, status=status)
        except ValueError:
            raise InvalidArguments("cursor is not one this API gave out") from None
        items = [t for t in items if may_touch(request, t, "tasks.read")]
        return json_response({"items": [view(t) for t in items], "next_cursor": next_cursor})

    return api
