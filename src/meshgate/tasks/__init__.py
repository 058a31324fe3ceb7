"""The task queue: durable storage and the workers that run what it accepts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshgate.config.redis import SENTINEL_SCHEMES, is_redis_url
from meshgate.crypto import PLAIN, Cipher
from meshgate.errors import ConfigError
from meshgate.tasks.base import UNBOUNDED, QueueBounds, QueueFull, TaskQueue

__all__ = ["QueueBounds", "QueueFull", "TaskQueue", "open_queue"]


def open_queue(
    url: str,
    path: Path | None,
    *,
    clock: Callable[[], float] = time.time,
    bounds: QueueBounds = UNBOUNDED,
    redis_options: Mapping[str, Any] | None = None,
    cipher: Cipher = PLAIN,
) -> TaskQueue:
    """The queue backend named by a URL: `embedded` (SQLite at `path`, or in memory when there
    is no data dir) or a Redis URL (`config.redis`; Redis Streams, shared by several nodes;
    `redis_options`: the CA bundle of a TLS URL).
    `clock` gives the times the queue stores and compares (retry delays, the result TTL);
    `bounds` what it holds (waiting tasks, final tasks kept); `cipher` seals what tasks
    carry."""
    if url == "embedded":
        from meshgate.tasks.embedded import EmbeddedQueue

        return EmbeddedQueue(path, clock=clock, bounds=bounds, cipher=cipher)
    if is_redis_url(url):
        from meshgate.tasks.redis import RedisQueue

        # Behind Sentinel a replica may become the primary: enqueues wait for one to have them.
        replicas = 1 if url.startswith(SENTINEL_SCHEMES) else 0
        return RedisQueue(
            url,
            clock=clock,
            bounds=bounds,
            options=redis_options,
            cipher=cipher,
            wait_replicas=replicas,
        )
    raise ConfigError(f"queue backend {url!r} is not available; use embedded or redis://")
