"""Task workers: claim queued tasks and run them through the router, until each is final.

Every node runs `concurrency` workers. A task runs its target (an MCP tool call, or an HTTP
request to a service) through the router, with the task's deadline. A failure the router
reports as retryable (no healthy instance, an open breaker, overload, a timeout, an upstream
failure) is tried again after an exponential backoff, up to `max_attempts`, then the task is
`dead`; anything else (bad arguments, an unknown tool, a 4xx answer) makes it `failed`. A
running task's lease is renewed while it runs; cancelling it cancels the call (the MCP server
gets `notifications/cancelled`). When it is final, its `callback_url` (if any) gets the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from typing import Any

import httpx

from meshgate.errors import MeshgateError, Unavailable, UpstreamError, UpstreamTimeout
from meshgate.resilience import BackoffPolicy, backoff_delay
from meshgate.router import Router
from meshgate.tasks.store import FINAL, TaskStore

log = logging.getLogger("meshgate.tasks")

MAX_RESULT_BYTES = 1024 * 1024


class PermanentFailure(Exception):
    """The target answered, and the answer is a failure that another try would repeat."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("detail"))
        self.error = error


class Workers:
    def __init__(
        self,
        store: TaskStore,
        router: Router,
        *,
        node: str,
        concurrency: int = 8,
        lease_s: float = 30.0,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.node = node
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.backoff = backoff or BackoffPolicy(0.2, 30.0)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.finished = asyncio.Condition()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()

    async def start(self) -> None:
        requeued = self.store.requeue_own(self.node)
        if requeued:
            log.info("%d tasks this node was running when it stopped are queued again", requeued)
        self._loop_task = asyncio.create_task(self._loop(), name="task workers")

    def wake(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """For /health: the backend, tasks by status, and what this node runs now."""
        return {
            "backend": "embedded",
            "store": self.store.path,
            "tasks": self.store.counts(),
            "running_here": len(self.running),
            "concurrency": self.concurrency,
        }

    async def stop(self) -> None:
        """Stop claiming; tasks still running stay `running` and are queued again at start."""
        self._stopping = True
        tasks = list(self.running.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cancel(self, task_id: str) -> str | None:
        before = self.store.cancel(task_id)
        running = self.running.get(task_id)
        if running is not None:
            running.cancel()
        return before

    async def _loop(self) -> None:
        while True:
            free = self.concurrency - len(self.running)
            if free > 0:
                for task in self.store.claim(self.node, free, self.lease_s):
                    self.running[task["id"]] = asyncio.create_task(
                        self._run(task), name=f"task {task['id']}"
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            self._wake.clear()

    async def _run(self, task: dict[str, Any]) -> None:
        id_ = task["id"]
        renew = asyncio.create_task(self._renew(id_))
        try:
            deadline_at = task["deadline_at"]
            remaining = deadline_at - time.time() if deadline_at else None
            if remaining is not None and remaining <= 0:
                self.store.finish(id_, "failed", error={"detail": "the task's deadline passed"})
            else:
                result = await self._execute(task["target"], remaining)
                self.store.finish(id_, "succeeded", result=result)
        except asyncio.CancelledError:
            if not self._stopping:
                self.store.finish(id_, "cancelled")  # DELETE /task/{id} (already marked)
        except PermanentFailure as e:
            self.store.finish(id_, "failed", error=e.error)
        except (Unavailable, UpstreamTimeout, UpstreamError) as e:
            error = _error(e)
            if task["attempts"] >= task["max_attempts"]:
                log.warning("task %s is dead after %d attempts: %s", id_, task["attempts"], e)
                self.store.finish(id_, "dead", error=error)
            else:
                delay = backoff_delay(task["attempts"], self.backoff, self._rng)
                self.store.retry_later(id_, delay, error)
        except MeshgateError as e:
            self.store.finish(id_, "failed", error=_error(e))
        except Exception as e:  # a bug must not lose the task: it is failed, with the reason
            log.exception("task %s failed unexpectedly", id_)
            self.store.finish(id_, "failed", error={"detail": f"{type(e).__name__}: {e}"})
        finally:
            renew.cancel()
            self.running.pop(id_, None)
            self._wake.set()
            async with self.finished:
                self.finished.notify_all()
        final = self.store.get(id_)
        callback = task["target"].get("callback_url")
        if callback and final is not None and final["status"] in FINAL:
            await self._callback(callback, final)

    async def _renew(self, id_: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            self.store.extend(id_, self.lease_s)

    async def _execute(self, target: dict[str, Any], timeout_s: float | None) -> Any:
        if "server" in target:
            return await self.router.call_tool(
                target["server"], target["tool"], target.get("arguments") or {}, timeout_s=timeout_s
            )
        body = target.get("body")
        content = json.dumps(body).encode() if body is not None else b""
        headers = [("content-type", "application/json")] if body is not None else []
        response = await self.router.proxy(
            target["service"],
            target.get("method", "POST"),
            target.get("path", "/"),
            headers=headers,
            body=content,
            timeout_s=timeout_s,
        )
        try:
            raw = b""
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > MAX_RESULT_BYTES:
                    raise PermanentFailure({"detail": "the answer exceeds 1 MiB"})
        finally:
            await response.aclose()
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
                    r = await client.post(url, json=task)
                if r.status_code < 500:
                    return
            except httpx.HTTPError as e:
                log.info("callback for %s failed (%s)", task["id"], e)
            await asyncio.sleep(0.5 * 2**attempt)
        log.warning("callback for task %s to %s gave up", task["id"], url)


def _error(e: MeshgateError) -> dict[str, Any]:
    return {"type": e.type, "status": e.status, "detail": e.detail, **e.extra}
