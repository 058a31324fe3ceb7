"""The task queue: durable storage and the workers that run what it accepts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from meshgate.crypto import PLAIN, Cipher
from meshgate.errors import ConfigError
from meshgate.tasks.base import TaskQueue


def open_queue(
    url: str,
    path: Path | None,
    *,
    clock: Callable[[], float] = time.time,
    cipher: Cipher = PLAIN,
) -> TaskQueue:
    """The queue backend named by a URL: `embedded` (SQLite at `path`, or in memory when there
    is no data dir) or `redis://` / `rediss://` (Redis Streams, shared by several nodes).
    `clock` gives the times the queue stores and compares (retry delays, the result TTL);
    `cipher` seals what tasks carry."""
    if url == "embedded":
        from meshgate.tasks.embedded import EmbeddedQueue

        return EmbeddedQueue(path, clock=clock, cipher=cipher)
    if url.startswith(("redis://", "rediss://")):
        from meshgate.tasks.redis import RedisQueue

        return RedisQueue(url, clock=clock, cipher=cipher)
    raise ConfigError(f"queue backend {url!r} is not available; use embedded or redis://")
