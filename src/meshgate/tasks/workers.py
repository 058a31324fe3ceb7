"""Task workers: claim queued tasks and run them through the router, until each is final.

Every node runs `concurrency` workers. A task runs its target (an MCP tool call, or an HTTP
request to a service) through the router, with the task's deadline. A failure the router
reports as retryable (no healthy instance, an open breaker, overload, a timeout, an upstream
failure) is tried again after an exponential backoff, up to `max_attempts`, then the task is
`dead`; anything else (bad arguments, an unknown tool, a 4xx answer) makes it `failed`. A
running task's lease is renewed while it runs; cancelling it cancels the call (the MCP server
gets `notifications/cancelled`), on whichever node runs it. When it is final, its
`callback_url` (if any) gets the task. A target's `task_concurrency` bounds how many of its
tasks run at once on each node. Final tasks are forgotten after `task_result_ttl_s`, and the
oldest beyond `max_kept_tasks` (the queue's bounds), by the sweep every minute or so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from meshgate.errors import (
    MeshgateError,
    QueueUnavailable,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from meshgate.observability import tracing
from meshgate.observability.metrics import metrics
from meshgate.resilience import BackoffPolicy, backoff_delay
from meshgate.router import Router
from meshgate.router.call import Call
from meshgate.security import Principal
from meshgate.tasks.base import FINAL, TaskQueue, view
from meshgate.wire.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND

T = TypeVar("T")
ToolCall = Callable[[str, dict[str, Any], float | None], Awaitable[dict[str, Any]]]
"""(task id, target, timeout) -> the tools/call result: how a task calls an MCP tool, when
something other than the plain router call (the MCP front end, which relays the server's
questions) should."""

log = logging.getLogger("meshgate.tasks")

MAX_RESULT_BYTES = 1024 * 1024
REQUEST_ERRORS = (INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS)  # the request is wrong


class PermanentFailure(Exception):
    """The target answered, and the answer is a failure that another try would repeat."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("detail"))
        self.error = error


class Workers:
    def __init__(
        self,
        store: TaskQueue,
        router: Router,
        *,
        node: str,
        concurrency: int = 8,
        lease_s: float = 30.0,
        result_ttl_s: float = 86400,
        limits: Callable[[str], int | None] = lambda target: None,
        backoff: BackoffPolicy | None = None,
        tool_call: ToolCall | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.node = node
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.result_ttl_s = result_ttl_s
        self.limits = limits
        self.tool_call = tool_call
        self.backoff = backoff or BackoffPolicy(0.2, 30.0)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.per_target: Counter[str] = Counter()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()
        store.subscribe(self._on_event)

    async def start(self) -> None:
        await self.store.start()
        try:
            requeued = await self.store.requeue_own(self.node)
            if requeued:
                log.info(
                    "%d tasks this node was running when it stopped are queued again", requeued
                )
        except QueueUnavailable as e:
            log.warning("%s; its tasks run again once their lease runs out", e.detail)
        self._loop_task = asyncio.create_task(self._loop(), name="task workers")

    def wake(self) -> None:
        self._wake.set()

    async def changed(self, timeout_s: float) -> None:
        """Return when some task became final (on any node the backend reports), or after
        `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()

    async def status(self) -> dict[str, Any]:
        """For /health: the backend, tasks by status, and what this node runs now."""
        out: dict[str, Any] = {
            **self.store.status(),
            "running_here": len(self.running),
            "concurrency": self.concurrency,
        }
        try:
            async with asyncio.timeout(1.0):
                out["tasks"] = await self.store.counts()
        except (QueueUnavailable, TimeoutError) as e:
            out["tasks"] = None
            out["error"] = getattr(e, "detail", None) or "the queue did not answer within 1 s"
        return out

    async def stop(self) -> None:
        """Stop claiming; tasks still running stay `running` and are queued again at start."""
        self._stopping = True
        tasks = list(self.running.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    async def cancel(self, task_id: str) -> str | None:
        before = await self.store.cancel(task_id)
        self._on_event("cancel", task_id)
        return before

    def _on_event(self, kind: str, task_id: str) -> None:
        if kind == "cancel":
            running = self.running.get(task_id)
            if running is not None and not running.cancelling():
                running.cancel()
        elif kind == "done":
            self._changed.set()
            self._changed = asyncio.Event()

    async def _loop(self) -> None:
        failures = 0
        swept_at = 0.0
        while True:
            try:
                free = self.concurrency - len(self.running)
                if free > 0:
                    skip = frozenset(
                        name
                        for name, n in self.per_target.items()
                        if (limit := self.limits(name)) is not None and n >= limit
                    )
                    for task in await self.store.claim(self.node, free, self.lease_s, skip):
                        self.running[task["id"]] = asyncio.create_task(
                            self._run(task), name=f"task {task['id']}"
                        )
                if time.monotonic() - swept_at > min(60.0, self.result_ttl_s / 10):
                    swept_at = time.monotonic()
                    if forgotten := await self.store.sweep(self.result_ttl_s):
                        log.info(
                            "forgot %d final tasks older than the result TTL or beyond "
                            "max_kept_tasks",
                            forgotten,
                        )
                failures = 0
            except QueueUnavailable as e:
                failures += 1
                if failures == 1:
                    log.warning("%s; retrying", e.detail)
                await asyncio.sleep(backoff_delay(failures, self.backoff, self._rng))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            self._wake.clear()

    def _slot(self, target: str) -> asyncio.Semaphore | None:
        limit = self.limits(target)
        if limit is None:
            return None
        if target not in self._slots:
            self._slots[target] = asyncio.Semaphore(limit)
        return self._slots[target]

    async def _run(self, task: dict[str, Any]) -> None:
        id_ = task["id"]
        target = task["target"]
        name = target.get("server") or target.get("service") or ""
        self.per_target[name] += 1
        renew = asyncio.create_task(self._renew(id_))
        try:
            slot = self._slot(name)  # a backend that cannot skip busy targets waits here
            async with slot if slot is not None else contextlib.nullcontext():
                await self._measured(name, task)
        except asyncio.CancelledError:
            if not self._stopping:  # DELETE /task/{id}: marked cancelled already
                await self._durably(self.store.finish, id_, "cancelled")
        finally:
            renew.cancel()
            self.running.pop(id_, None)
            self.per_target[name] -= 1
            if not self.per_target[name]:
                del self.per_target[name]
            self._wake.set()
        callback = target.get("callback_url")
        if callback and not self._stopping:
            final = await self._durably(self.store.get, id_)
            if final is not None and final["status"] in FINAL:
                await self._callback(callback, final)

    async def _measured(self, name: str, task: dict[str, Any]) -> None:
        """One attempt, counted in `meshgate_task_duration_seconds` and, with tracing on, a
        span under the trace of the request that enqueued the task."""
        started = time.perf_counter()
        outcome = "cancelled"
        t = tracing.tracer
        span = None
        parent = task["target"].get("trace")
        carrier = parent if isinstance(parent, dict) else {}
        if t is not None and tracing.sampled(carrier):
            span = t.start_span(
                f"task {name}",
                context=tracing.extract(carrier) if carrier else None,
                kind=tracing.SpanKind.CONSUMER,
                attributes={"meshgate.task": task["id"], "meshgate.attempt": task["attempts"]},
            )
        try:
            outcome = await tracing.within(span, self._attempt(task))
        finally:
            metrics.task(name, outcome, time.perf_counter() - started)
            if span is not None:
                span.set_attribute("meshgate.outcome", outcome)
                failed = outcome in ("failed", "dead", "retry")
                tracing.end(span, RuntimeError(outcome) if failed else None)

    async def _attempt(self, task: dict[str, Any]) -> str:
        """Run the task once and record what came of it: its outcome (a final status, or
        `retry`)."""
        id_ = task["id"]
        finish = self.store.finish
        outcome = "failed"
        try:
            deadline_at = task["deadline_at"]
            remaining = deadline_at - time.time() if deadline_at else None
            if remaining is not None and remaining <= 0:
                error = {"detail": "the task's deadline passed"}
                await self._durably(finish, id_, "failed", error=error)
                return outcome
            result = await self._execute(id_, task["target"], remaining)
        except PermanentFailure as e:
            await self._durably(finish, id_, "failed", error=e.error)
        except (Unavailable, UpstreamTimeout, UpstreamError, RateLimited) as e:
            error = _error(e)
            if e.extra.get("upstream_code") in REQUEST_ERRORS:  # another try is refused alike
                await self._durably(finish, id_, "failed", error=error)
            elif task["attempts"] >= task["max_attempts"]:
                log.warning("task %s is dead after %d attempts: %s", id_, task["attempts"], e)
                outcome = "dead"
                await self._durably(finish, id_, "dead", error=error)
            else:
                outcome = "retry"
                delay = backoff_delay(task["attempts"], self.backoff, self._rng)
                await self._durably(self.store.retry_later, id_, delay, error)
        except MeshgateError as e:
            await self._durably(finish, id_, "failed", error=_error(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not lose the task: it is failed, with the reason
            log.exception("task %s failed unexpectedly", id_)
            error = {"detail": f"{type(e).__name__}: {e}"}
            await self._durably(finish, id_, "failed", error=error)
        else:
            outcome = "succeeded"
            await self._durably(finish, id_, "succeeded", result=result)
        return outcome

    async def _durably(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Record an outcome, waiting out a short outage of the backend; past one lease the
        task is someone else's (it runs again: at least once)."""
        end = time.monotonic() + self.lease_s
        attempt = 0
        while True:
            try:
                return await fn(*args, **kwargs)
            except QueueUnavailable:
                attempt += 1
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(backoff_delay(attempt, self.backoff, self._rng))

    async def _renew(self, id_: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            with contextlib.suppress(QueueUnavailable):
                await self.store.extend(id_, self.node, self.lease_s)

    @staticmethod
    def _call(
        target: dict[str, Any],
        kind: str,
        what: str,
        timeout_s: float | None,
        arguments: Any,
        *,
        body_size: int = 0,
    ) -> Call:
        """A task's call as the router sees it: entered as `task`, by whoever enqueued it."""
        return Call(
            service=target["server"] if kind == "mcp" else target["service"],
            kind=kind,
            target=what,
            entry="task",
            caller=target.get("caller"),
            arguments=arguments,
            body_size=body_size,
            timeout_s=timeout_s,
            method="tools/call" if kind == "mcp" else target.get("method", "POST"),
            principal=Principal.from_json(target.get("principal")),
        )

    async def _execute(self, id_: str, target: dict[str, Any], timeout_s: float | None) -> Any:
        if "server" in target:
            if self.tool_call is not None:
                result = await self.tool_call(id_, target, timeout_s)
            else:
                arguments = target.get("arguments") or {}
                result = await self.router.call_tool(
                    target["server"],
                    target["tool"],
                    arguments,
                    call=self._call(target, "mcp", target["tool"], timeout_s, arguments),
                )
            if result.get("resultType") == "input_required":
                asked = sorted(
                    str(r.get("method"))
                    for r in (result.get("inputRequests") or {}).values()
                    if isinstance(r, dict)
                )
                raise PermanentFailure(
                    {
                        "code": INTERNAL_ERROR,
                        "detail": f"{target['server']} asked for input ({', '.join(asked)}), "
                        "which a task run by the queue cannot give",
                    }
                )
            return result
        body = target.get("body")
        content = json.dumps(body).encode() if body is not None else b""
        headers = [("content-type", "application/json")] if body is not None else []
        path = target.get("path", "/")
        response = await self.router.proxy(
            target["service"],
            target.get("method", "POST"),
            path,
            call=self._call(target, "http", path, timeout_s, None, body_size=len(content)),
            headers=headers,
            body=content,
        )
        try:
            raw = b""
            async for chunk in response.chunks():
                raw += chunk
                if len(raw) > MAX_RESULT_BYTES:
                    raise PermanentFailure({"detail": "the answer exceeds 1 MiB"})
        finally:
            response.close()
        try:
            answer: Any = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        result = {"status": response.status_code, "body": answer}
        if response.status_code >= 500:
            raise UpstreamError(f"{target['service']} answered {response.status_code}")
        if response.status_code >= 400:
            raise PermanentFailure({"detail": f"HTTP {response.status_code}", **result})
        return result

    async def _callback(self, url: str, task: dict[str, Any]) -> None:
        for attempt in range(3):
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    r = await client.post(url, json=view(task))
                if r.status_code < 500:
                    return
            except httpx.HTTPError as e:
                log.info("callback for %s failed (%s)", task["id"], e)
            await asyncio.sleep(0.5 * 2**attempt)
        log.warning("callback for task %s to %s gave up", task["id"], url)


def _error(e: MeshgateError) -> dict[str, Any]:
    return {
        "type": e.type,
        "status": e.status,
        "code": e.jsonrpc_code,
        "detail": e.detail,
        **e.extra,
    }
