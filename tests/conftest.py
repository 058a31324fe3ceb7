"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshgate.testing.redis_server import RedisServer


@pytest.fixture(params=["embedded", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The gateway environment that selects a task queue backend: embedded, or a fresh
    redis-server of the test's own."""
    if request.param == "embedded":
        yield {}
        return
    server = RedisServer(tmp_path).start()
    try:
        yield {"MESHGATE_QUEUE": server.url}
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
