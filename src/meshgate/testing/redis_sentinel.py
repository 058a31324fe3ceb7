"""A real Redis Sentinel set for tests: a primary, its replica and three sentinels, each a
redis-server process on a free port in its own directory, stopped by PID.

The sentinels judge the primary down after `down_after_ms` without an answer (small, so a
failover takes a few seconds) and need two of three to agree, as a production quorum would.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from meshgate.testing.redis_server import RedisServer

MASTER = "meshgate"


class RedisSentinelSet:
    """A primary, a replica of it and three sentinels watching them."""

    def __init__(
        self, workdir: Path, *, down_after_ms: int = 500, failover_timeout_ms: int = 3000
    ) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary = RedisServer(self._dir("primary"))
        self.replica = RedisServer(
            self._dir("replica"), args=["--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        self.sentinels: list[RedisServer] = []

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def url(self) -> str:
        """The `redis+sentinel://` URL of the set, database 0."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def start(self, timeout_s: float = 30.0) -> RedisSentinelSet:
        """Start every process and wait until the sentinels know the replica and one another:
        before then a failover could not happen."""
        self.primary.start()
        self.replica.start()
        for i in range(3):
            where = self._dir(f"sentinel{i}")
            sentinel = RedisServer(where)
            conf = where / "sentinel.conf"  # sentinels rewrite their config: a file of its own
            conf.write_text(
                f"port {sentinel.port}\n"
                "bind 127.0.0.1\n"
                f"dir {where}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.sentinels.append(_start_sentinel(sentinel, conf))
        wait_until(timeout_s, self._ready, "the sentinels to see the replica and each other")
        return self

    def _ready(self) -> bool:
        if self._link(self.replica.port) != "up":
            return False
        for s in self.sentinels:
            with redis.Redis(port=s.port, socket_timeout=1, decode_responses=True) as c:
                if len(c.sentinel_slaves(MASTER)) < 1 or len(c.sentinel_sentinels(MASTER)) < 2:
                    return False
        return True

    def _link(self, port: int) -> str | None:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as c:
            info = c.info("replication")
        status = info.get("master_link_status")
        return str(status) if status is not None else None

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the sentinels name it (None: no majority)."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            try:
                with redis.Redis(port=s.port, socket_timeout=1, decode_responses=True) as c:
                    addr = c.sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            if addr:
                port = int(addr[1])
                votes[port] = votes.get(port, 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best is not None and best[1] >= 2 else None

    def kill_primary(self) -> int:
        """Kill the current primary's process (SIGKILL, by PID); its PID."""
        proc = self.primary.proc
        assert proc is not None
        pid = proc.pid
        self.primary.stop()
        return pid

    def wait_promoted(self, timeout_s: float = 30.0) -> float:
        """Wait until the sentinels name the replica as primary and it accepts writes; the
        seconds it took."""
        start = time.monotonic()

        def promoted() -> bool:
            if self.primary_port() != self.replica.port:
                return False
            with redis.Redis(port=self.replica.port, socket_timeout=1) as c:
                return bool(c.info("replication").get("role") == "master")

        wait_until(timeout_s, promoted, "the replica to be promoted")
        return time.monotonic() - start

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            server.stop()


def _start_sentinel(server: RedisServer, conf: Path) -> RedisServer:
    """Run `server` as a sentinel with `conf` (redis-server CONF --sentinel)."""
    server.proc = subprocess.Popen(
        [server.binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", server.port)) == 0:
                return server
        time.sleep(0.02)
    raise RuntimeError(f"redis sentinel did not listen on {server.port}")


def wait_until(timeout_s: float, done: Callable[[], bool], what: str) -> None:
    """Poll `done` (a Redis or socket error counts as not yet) until it holds, for at most
    `timeout_s`; TimeoutError naming `what` otherwise."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if done():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"waited {timeout_s}s for {what}")
