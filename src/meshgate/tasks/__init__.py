"""The task queue: durable storage and the workers that run what it accepts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from meshgate.errors import ConfigError
from meshgate.tasks.base import UNBOUNDED, QueueBounds, QueueFull, TaskQueue

__all__ = ["QueueBounds", "QueueFull", "TaskQueue", "open_queue"]


def open_queue(
    url: str,
    path: Path | None,
    *,
    clock: Callable[[], float] = time.time,
    bounds: QueueBounds = UNBOUNDED,
) -> TaskQueue:
    """The queue backend named by a URL: `embedded` (SQLite at `path`, or in memory when there
    is no data dir) or `redis://` / `rediss://` (Redis Streams, shared by several nodes).
    `clock` gives the times the queue stores and compares (retry delays, the result TTL);
    `bounds` what it holds (waiting tasks, final tasks kept)."""
    if url == "embedded":
        from meshgate.tasks.embedded import EmbeddedQueue

        return EmbeddedQueue(path, clock=clock, bounds=bounds)
    if url.startswith(("redis://", "rediss://")):
        from meshgate.tasks.redis import RedisQueue

        return RedisQueue(url, clock=clock, bounds=bounds)
    raise ConfigError(f"queue backend {url!r} is not available; use embedded or redis://")
