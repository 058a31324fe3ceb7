"""MCP tasks: a tool call that runs as a task of the gateway's queue, for MCP clients.

Two versions of the protocol define tasks, and `/mcp` speaks both:

- 2025-11-25 (experimental tasks): the gateway declares `capabilities.tasks` and marks each
  tool's `execution.taskSupport`; the client asks for a task with `params.task` on
  `tools/call` and gets `{"task": {...}}`; `tasks/get`, `tasks/result` (waits for the end),
  `tasks/cancel` and `tasks/list` (the tasks the client's session created) follow; when a task
  ends, the session that created it on this node is sent `notifications/tasks/status` on its
  GET stream.
- 2026-07-28 (the `io.modelcontextprotocol/tasks` extension): the gateway advertises the
  extension in `server/discover`; when a request declares it, the gateway decides: a tool whose
  task support is `optional` or `required` runs as a task and the answer is a flat
  `{"resultType": "task", "taskId", ...}`; `tasks/get` carries the result or the error inline,
  `tasks/update` and `tasks/cancel` answer with an empty acknowledgement.

A tool's task support is the server's `task_support` policy, or its `tool_task_support` entry
(`forbidden` by default: tools run as plain calls). A task is a queue task like one from
`POST /enqueue`: stored before the answer, run by the workers through the router, kept for the
result TTL, visible through the REST task API as well, and it survives a gateway restart.

A server may ask its client something while it runs a task (sampling, elicitation, roots;
as a request to the client, or as an `input_required` result). The question is stored with
the task, which shows `input_required` with its `inputRequests`, and the call waits (within its
deadline) for the answer: from `tasks/update` (2026-07-28), or, for a 2025-11-25 client, asked
by the gateway on the stream of the client's `tasks/result`. The answers reach the waiting
call on whichever node runs it. The task may ask only what the client that created it
declared it can answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from meshgate.errors import MeshgateError
from meshgate.frontend.input_required import SETTLE_S, answer_of, name_question
from meshgate.observability import tracing
from meshgate.tasks.base import FINAL, page, timestamp
from meshgate.tasks.workers import Workers
from meshgate.upstream.supervisor import ServerPool
from meshgate.wire.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    JSON,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    JsonRpcError,
)
from meshgate.wire.protocol import HANDSHAKE_VERSION

EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
POLL_INTERVAL_MS = 500
LIST_PAGE = 100
MAX_ATTEMPTS = 3


def task_error(error: Any) -> JSON:
    """A stored task error as a JSON-RPC error object: the server's own, when it sent one."""
    error = error if isinstance(error, dict) else {}
    if "upstream_code" in error:
        out: JSON = {"code": error["upstream_code"], "message": error.get("upstream_message", "")}
        if error.get("upstream_data") is not None:
            out["data"] = error["upstream_data"]
        return out
    data = {k: v for k, v in error.items() if k not in ("code", "detail")}
    out = {
        "code": error.get("code", INTERNAL_ERROR),
        "message": error.get("detail") or "the task failed",
    }
    if data:
        out["data"] = data
    return out


Ask = Callable[[str, JSON], Awaitable[JSON]]


class McpTasks:
    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.store = workers.store
        self._answered: dict[str, asyncio.Event] = {}
        self.notify: Callable[[str, JSON], None] | None = None  # (session id, message)
        self._watched: dict[str, str] = {}  # task id -> the session to tell when it ends
        self._notifying: set[asyncio.Task[None]] = set()
        self.store.subscribe(self._on_event)

    def _on_event(self, kind: str, task_id: str) -> None:
        if kind == "input" and (event := self._answered.pop(task_id, None)) is not None:
            event.set()
        elif kind == "done" and (session := self._watched.pop(task_id, None)) is not None:
            task = asyncio.create_task(self._tell(session, task_id))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    async def _tell(self, session: str, task_id: str) -> None:
        """`notifications/tasks/status` with the final task, to the session that created it."""
        with contextlib.suppress(MeshgateError):
            task = await self.store.get(task_id)
            if task is not None and self.notify is not None:
                params = self.view(task, HANDSHAKE_VERSION)
                message = {"jsonrpc": "2.0", "method": "notifications/tasks/status"}
                self.notify(session, {**message, "params": params})

    def questions(self, task_id: str, timeout_s: float) -> TaskQuestions:
        """How a running task's server asks its client: through the task."""
        return TaskQuestions(self, task_id, timeout_s)

    async def wait_answer(self, task_id: str, key: str, timeout_s: float) -> Any:
        async with asyncio.timeout(timeout_s):
            while True:
                event = self._answered.setdefault(task_id, asyncio.Event())
                found, value = await self.store.take_input(task_id, key)
                if found:
                    return value
                with contextlib.suppress(TimeoutError):  # an event missed: look again anyway
                    async with asyncio.timeout(1.0):
                        await event.wait()

    # -- negotiation ---------------------------------------------------------------------------

    @staticmethod
    def support(pool: ServerPool, tool: str) -> str:
        """`forbidden`, `optional` or `required`: how this tool may run as a task."""
        policy = pool.policy
        return policy.tool_task_support.get(tool, policy.task_support)

    @staticmethod
    def capabilities(version: str) -> JSON:
        """What the gateway adds to its capabilities for a client of this version."""
        if version == HANDSHAKE_VERSION:
            return {"tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}
        if version > HANDSHAKE_VERSION:
            return {"extensions": {EXTENSION: {}}}
        return {}

    def annotate(self, pool: ServerPool, name: str, tool: JSON, version: str) -> JSON:
        """A tool as `tools/list` shows it to a client of `version`."""
        if version != HANDSHAKE_VERSION:
            return tool
        support = self.support(pool, name)
        if support == "forbidden":
            return tool
        return {**tool, "execution": {**tool.get("execution", {}), "taskSupport": support}}

    @staticmethod
    def declared(client_capabilities: JSON) -> bool:
        """Whether a stateless request declares the tasks extension."""
        extensions = client_capabilities.get("extensions")
        return isinstance(extensions, dict) and EXTENSION in extensions

    def wants_task(
        self, pool: ServerPool, tool: str, params: JSON, version: str, client_capabilities: JSON
    ) -> bool:
        """Whether this `tools/call` runs as a task; refuses what the tool or client cannot."""
        support = self.support(pool, tool)
        if version > HANDSHAKE_VERSION:  # the server decides; a legacy params.task is ignored
            if support == "required" and not self.declared(client_capabilities):
                raise self._undeclared(f"{tool} runs only as a task")
            return support != "forbidden" and self.declared(client_capabilities)
        asked = version == HANDSHAKE_VERSION and isinstance(params.get("task"), dict)
        if asked and support == "forbidden":
            raise JsonRpcError(METHOD_NOT_FOUND, f"{tool} does not run as a task")
        if not asked and support == "required":
            raise JsonRpcError(
                METHOD_NOT_FOUND,
                f"{tool} runs only as a task: call it with params.task (protocol 2025-11-25)",
            )
        return asked

    @staticmethod
    def _undeclared(why: str) -> JsonRpcError:
        return JsonRpcError(
            MISSING_CAPABILITY,
            f"{why}; declare the {EXTENSION} extension in the request's client capabilities",
            {"requiredCapabilities": {"extensions": {EXTENSION: {}}}},
        )

    # -- creating ------------------------------------------------------------------------------

    async def create(
        self,
        server: str,
        tool: str,
        arguments: JSON,
        version: str,
        client_capabilities: JSON,
        *,
        owner: str | None = None,
        caller: str | None = None,
    ) -> JSON:
        """Store the call as a queue task (durably, before answering); its CreateTaskResult.
        `client_capabilities` are what the task's server may ask the client."""
        target = {
            "server": server,
            "tool": tool,
            "arguments": arguments,
            "client_capabilities": client_capabilities,
        }
        if caller:
            target["caller"] = caller
        if tracing.active() is not None:  # the task's spans join this request's trace
            target["trace"] = tracing.inject()
        task_id, _ = await self.store.enqueue(
            target,
            server,
            priority=0,
            max_attempts=MAX_ATTEMPTS,
            deadline_s=None,
            idempotency_key=None,
            owner=owner,
        )
        self.workers.wake()
        if owner is not None and version == HANDSHAKE_VERSION:
            self._watched[task_id] = owner
        task = await self.store.get(task_id)
        if task is None:  # forgotten at once: only with a result TTL shorter than a request
            raise JsonRpcError(INTERNAL_ERROR, f"task {task_id} vanished right after it was stored")
        view = self.view(task, version)
        if version > HANDSHAKE_VERSION:
            return {**view, "resultType": "task"}
        return {"task": view}

    # -- the task methods ----------------------------------------------------------------------

    async def handle(
        self,
        method: str,
        params: JSON,
        version: str,
        client_capabilities: JSON,
        ask: Ask | None = None,
        *,
        owner: str | None = None,
    ) -> JSON:
        stateless = version > HANDSHAKE_VERSION
        if stateless:
            if method not in ("tasks/get", "tasks/update", "tasks/cancel"):
                raise JsonRpcError(METHOD_NOT_FOUND, f"{method} is not part of the tasks extension")
            if not self.declared(client_capabilities):
                raise self._undeclared(f"{method} belongs to the tasks extension")
        elif version != HANDSHAKE_VERSION or method not in (
            "tasks/get",
            "tasks/result",
            "tasks/cancel",
            "tasks/list",
        ):
            raise JsonRpcError(METHOD_NOT_FOUND, f"method not found: {method}")
        if method == "tasks/list":
            return await self._list(params, owner, version)
        task = await self._task(params)
        if method == "tasks/get":
            view = self.view(task, version)
            if stateless:
                view["resultType"] = "complete"
                self._inline_outcome(task, view)
            return view
        if method == "tasks/update":  # answers to questions not open are ignored
            responses = params.get("inputResponses")
            if not isinstance(responses, dict):
                raise JsonRpcError(INVALID_PARAMS, "'inputResponses' must be an object")
            await self._stored(self.store.answer_input(task["id"], responses))
            return {"resultType": "complete"}
        if method == "tasks/cancel":
            if not stateless and task["status"] in FINAL:
                raise JsonRpcError(
                    INVALID_PARAMS, f"task {task['id']} is {self._status(task, version)} already"
                )
            await self.workers.cancel(task["id"])
            if stateless:
                return {"resultType": "complete"}
            return self.view(await self._task(params), version)
        return await self._result(task, ask)  # tasks/result (2025-11-25): wait for the end

    async def _list(self, params: JSON, owner: str | None, version: str) -> JSON:
        """A session's own tasks, oldest id first, `LIST_PAGE` at a time."""
        if owner is None:
            raise JsonRpcError(METHOD_NOT_FOUND, "tasks/list needs a session")
        cursor = params.get("cursor")
        try:
            tasks, next_cursor = await self._stored(
                page(self.store, str(cursor) if cursor else None, LIST_PAGE, owner=owner)
            )
        except ValueError:
            raise JsonRpcError(INVALID_PARAMS, "cursor is not one this server gave out") from None
        out: JSON = {"tasks": [self.view(t, version) for t in tasks]}
        if next_cursor is not None:
            out["nextCursor"] = next_cursor
        return out

    @staticmethod
    async def _stored(pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except MeshgateError as e:
            raise JsonRpcError(e.jsonrpc_code, e.detail) from None

    async def _task(self, params: JSON) -> dict[str, Any]:
        task_id = params.get("taskId")
        if not isinstance(task_id, str) or not task_id:
            raise JsonRpcError(INVALID_PARAMS, "'taskId' must be a non-empty string")
        task = await self._stored(self.store.get(task_id))
        if task is None:
            raise JsonRpcError(INVALID_PARAMS, f"no task {task_id!r} (unknown, or expired)")
        return dict(task)

    async def _result(self, task: dict[str, Any], ask: Ask | None) -> JSON:
        while task["status"] not in FINAL:
            if ask is not None and task["input_requests"]:
                await self._ask_client(task, ask)
            else:
                await self.workers.changed(1.0)
            task = await self._task({"taskId": task["id"]})
        related = {RELATED_TASK: {"taskId": task["id"]}}
        if task["status"] == "succeeded" and isinstance(task["result"], dict):
            result = task["result"]
            return {**result, "_meta": {**result.get("_meta", {}), **related}}
        if task["status"] == "cancelled":
            raise JsonRpcError(
                INTERNAL_ERROR, f"task {task['id']} was cancelled", {"_meta": related}
            )
        error = task_error(task["error"])
        raise JsonRpcError(error["code"], error["message"], error.get("data"))

    async def _ask_client(self, task: dict[str, Any], ask: Ask) -> None:
        """Put a task's open questions to a 2025-11-25 client on its `tasks/result` stream."""
        related = {RELATED_TASK: {"taskId": task["id"]}}

        async def one(key: str, question: JSON) -> tuple[str, JSON]:
            given = question.get("params")
            params: JSON = dict(given) if isinstance(given, dict) else {}
            meta = params.get("_meta")
            params["_meta"] = {**(meta if isinstance(meta, dict) else {}), **related}
            try:
                return key, await ask(str(question.get("method")), params)
            except JsonRpcError as e:
                return key, {"error": {"code": e.code, "message": e.message}}

        asked = await asyncio.gather(*(one(k, q) for k, q in task["input_requests"].items()))
        await self._stored(self.store.answer_input(task["id"], dict(asked)))

    # -- how a queue task looks to an MCP client -----------------------------------------------

    @staticmethod
    def _status(task: dict[str, Any], version: str) -> str:
        status = task["status"]
        if status == "running" and task.get("input_requests"):
            return "input_required"
        if status in ("queued", "running"):
            return "working"
        if status == "succeeded":
            result = task["result"]
            tool_error = isinstance(result, dict) and result.get("isError") is True
            return "failed" if tool_error and version == HANDSHAKE_VERSION else "completed"
        return "cancelled" if status == "cancelled" else "failed"

    def view(self, task: dict[str, Any], version: str) -> JSON:
        ttl_ms = int(self.workers.result_ttl_s * 1000)
        updated = task["finished_at"] or task["started_at"] or task["created_at"]
        out: JSON = {
            "taskId": task["id"],
            "status": self._status(task, version),
            "createdAt": timestamp(task["created_at"]),
            "lastUpdatedAt": timestamp(updated),
        }
        if version > HANDSHAKE_VERSION:
            out["ttlMs"], out["pollIntervalMs"] = ttl_ms, POLL_INTERVAL_MS
        else:
            out["ttl"], out["pollInterval"] = ttl_ms, POLL_INTERVAL_MS
        message = self._message(task)
        if message:
            out["statusMessage"] = message
        return out

    @staticmethod
    def _message(task: dict[str, Any]) -> str | None:
        status = task["status"]
        if status == "queued":
            return "queued" + (f" (attempt {task['attempts'] + 1})" if task["attempts"] else "")
        if status == "running":
            return f"running (attempt {task['attempts']})"
        if status in ("failed", "dead"):
            return str(task_error(task["error"])["message"])
        return None

    def _inline_outcome(self, task: dict[str, Any], view: JSON) -> None:
        if view["status"] == "input_required":
            view["inputRequests"] = task["input_requests"]
        elif view["status"] == "completed" and isinstance(task["result"], dict):
            result = {k: v for k, v in task["result"].items() if k != "resultType"}
            view["result"] = result
        elif view["status"] == "failed":
            view["error"] = task_error(task["error"])


class TaskQuestions:
    """The questions a task's server asks while the task runs, put to the client through the
    task: each is stored as one of the task's `inputRequests` until its answer comes back."""

    def __init__(self, tasks: McpTasks, task_id: str, timeout_s: float) -> None:
        self.tasks = tasks
        self.task_id = task_id
        self.timeout_s = timeout_s
        self._numbers = itertools.count(1)
        self._used: set[str] = set()
        self._open: set[str] = set()

    def waiting(self) -> bool:
        """Parked for the client: the server is not working on the call meanwhile."""
        return bool(self._open)

    async def __call__(self, method: str, params: JSON) -> JSON:
        key, params = name_question(method, params, self._used, next(self._numbers))
        self._used.add(key)
        store = self.tasks.store
        try:
            if not await store.ask_input(self.task_id, key, {"method": method, "params": params}):
                raise JsonRpcError(INTERNAL_ERROR, f"task {self.task_id} is no longer running")
            await asyncio.sleep(SETTLE_S)  # what the server asks at once still counts as its own
            self._open.add(key)
            try:
                value = await self.tasks.wait_answer(self.task_id, key, self.timeout_s)
            except TimeoutError:
                raise JsonRpcError(
                    INTERNAL_ERROR, f"no answer to {method} within {self.timeout_s:g} s"
                ) from None
            try:
                return answer_of(value)
            except ValueError:
                raise JsonRpcError(
                    INVALID_PARAMS, f"the answer to {key} is not an object"
                ) from None
        finally:
            self._open.discard(key)
