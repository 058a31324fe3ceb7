"""The TaskQueue protocol: what workers and the task API need of a queue backend.

Two backends keep it: `embedded` (SQLite WAL, one node) and `redis://` (Redis Streams with a
consumer group, shared by several nodes). Both give the same behaviour, which one test suite
checks: a task is stored before `enqueue` returns; `claim` hands each ready task to one worker
with a lease; a task whose lease runs out (its node died) is handed out again; a final task
never changes again (except `retry_dead`, which queues a dead or failed task anew).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from meshgate.errors import TooManyRequests
from meshgate.observability.metrics import count_rate_limited

FINAL = ("succeeded", "failed", "cancelled", "dead")
STATUSES = ("queued", "running", *FINAL)
FIELDS = (
    "id",
    "status",
    "target",
    "priority",
    "max_attempts",
    "attempts",
    "deadline_at",
    "idempotency_key",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "worker",
    "input_requests",
)

QUEUE_FULL_RETRY_S = 10.0  # a full queue drains at the workers' pace: not worth asking sooner


@dataclass(frozen=True)
class QueueBounds:
    """How much a queue holds: tasks waiting to run (queued, or waiting for a retry) in all
    and per target, and final tasks kept (the oldest go first)."""

    max_queued: int | None = None
    max_queued_per_target: int | None = None
    max_kept: int | None = None


UNBOUNDED = QueueBounds()


class QueueFull(TooManyRequests):
    """The queue, or one target's share of it, holds as many waiting tasks as it may (429)."""

    type = "queue-full"
    title = "Task queue full"


def queue_full(bounds: QueueBounds, target_name: str | None) -> QueueFull:
    """The refusal of an enqueue past a bound (target_name: the per-target bound), counted."""
    if target_name is None:
        count_rate_limited("queue")
        return QueueFull(
            f"the task queue already holds {bounds.max_queued} waiting tasks "
            "(mesh.max_queued_tasks); retry later",
            retry_after=QUEUE_FULL_RETRY_S,
            extra={"bound": "max_queued_tasks", "limit": bounds.max_queued},
        )
    count_rate_limited("queue_per_target")
    return QueueFull(
        f"the task queue already holds {bounds.max_queued_per_target} waiting tasks for "
        f"{target_name!r} (mesh.max_queued_tasks_per_target); retry later",
        retry_after=QUEUE_FULL_RETRY_S,
        extra={"bound": "max_queued_tasks_per_target", "limit": bounds.max_queued_per_target},
    )


TIMES = ("created_at", "started_at", "finished_at", "deadline_at")  # Unix seconds when stored

Event = Callable[[str, str], None]
"""(kind, task id): `done` when a task became final, `cancel` when one was cancelled, `input`
when questions of a running task were answered; a shared backend reports other nodes' events
too."""


async def runnable(queue: TaskQueue, task: dict[str, Any]) -> bool:
    """False, after failing it, for a claimed task whose target cannot be decrypted: no node
    with these keys can run it (with the key configured again, `retry` queues it)."""
    if "undecryptable" not in task["target"]:
        return True
    error = {"detail": f"the task's target cannot be read: {task['target']['undecryptable']}"}
    await queue.finish(task["id"], "failed", error=error)
    return False


def timestamp(ts: float) -> str:
    """A task's time as every surface shows it (the REST task API, callbacks, the command line,
    MCP's `createdAt` and `lastUpdatedAt`): RFC 3339 in UTC with milliseconds, e.g.
    `2026-11-30T05:38:46.123Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def view(task: dict[str, Any]) -> dict[str, Any]:
    """A task as the REST task API and callbacks show it: its times as `timestamp`s."""
    out = {k: v for k, v in task.items() if k != "idempotency_key"}
    for key in TIMES:
        value = out.get(key)
        if value is not None:
            out[key] = timestamp(value)
    out["idempotency_key"] = task.get("idempotency_key")
    return out


async def page(
    queue: TaskQueue,
    cursor: str | None,
    limit: int,
    *,
    status: str | None = None,
    owner: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """(up to `limit` tasks, the cursor of the next page or None). A cursor is the last id of
    a page, base64url; one that is not raises ValueError."""
    after = ""
    if cursor:
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            after = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise ValueError("not a cursor this server gave out") from None
    items = await queue.list(status, after, limit + 1, owner=owner)
    if len(items) <= limit:
        return items, None
    last = str(items[limit - 1]["id"])
    return items[:limit], base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


class TaskQueue(Protocol):
    name: str

    async def start(self) -> None: ...

    def subscribe(self, listener: Event) -> None: ...

    async def enqueue(
        self,
        target: dict[str, Any],
        target_name: str,
        *,
        priority: int,
        max_attempts: int,
        deadline_s: float | None,
        idempotency_key: str | None,
        owner: str | None = None,
    ) -> tuple[str, bool]:
        """(task id, created); an idempotency key seen before returns that task. `owner` (an
        MCP session) is kept out of every view; `list` can filter by it. Past the queue's
        bounds: QueueFull (429), nothing stored."""
        ...

    async def claim(
        self, worker: str, n: int, lease_s: float, skip: frozenset[str] = frozenset()
    ) -> list[dict[str, Any]]:
        """Up to `n` ready tasks, now `running` under `worker` with a lease of `lease_s`; a
        backend that can leaves out tasks whose target is in `skip`."""
        ...

    async def extend(self, id_: str, worker: str, lease_s: float) -> None:
        """Renew the lease of a task `worker` runs."""
        ...

    async def finish(self, id_: str, status: str, *, result: Any = None, error: Any = None) -> bool:
        """Make a running or queued task final; False when it was final already."""
        ...

    async def retry_later(self, id_: str, delay_s: float, error: Any) -> None: ...

    async def cancel(self, id_: str) -> str | None:
        """The status before cancelling (None: no such task); a final task stays as it is."""
        ...

    async def requeue_own(self, worker: str) -> int:
        """Tasks `worker` was running when it stopped: ready again at once."""
        ...

    async def retry_dead(self, id_: str) -> bool: ...

    # The questions a running task's server asks its client (MCP sampling, elicitation, roots),
    # and the client's answers; both are dropped whenever the task changes status.

    async def ask_input(self, id_: str, key: str, request: dict[str, Any]) -> bool:
        """Record an open question of a running task; False when it is not running."""
        ...

    async def answer_input(self, id_: str, responses: dict[str, Any]) -> int | None:
        """Answers to open questions (others are ignored): how many were taken; None when there
        is no such task."""
        ...

    async def take_input(self, id_: str, key: str) -> tuple[bool, Any]:
        """(found, answer) of one question, handed out once."""
        ...

    async def get(self, id_: str) -> dict[str, Any] | None: ...

    async def list(
        self, status: str | None, after: str, limit: int, owner: str | None = None
    ) -> list[dict[str, Any]]:
        """Tasks by id after `after`: those with `status`, or (instead) those of `owner`."""
        ...

    async def counts(self) -> dict[str, int]: ...

    async def sweep(self, older_than_s: float) -> int:
        """Forget final tasks that finished more than `older_than_s` ago, and the oldest
        beyond the bounds' `max_kept`; how many."""
        ...

    async def reencrypt(self) -> tuple[int, int]:
        """Seal every task's data anew with the first encryption key: (tasks rewritten, tasks
        with a value no configured key decrypts, left as they were)."""
        ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...
