"""Redis Sentinel for a `Cluster`: its Redis as the primary, a replica and three sentinels, each
in a namespace of its own on the run's bridge (`Cluster.add_host`), started and killed by PID.

The sentinels judge the primary down after `down_after_ms` without an answer and need two of
three to agree, as in production. The replica persists as the primary does (`appendfsync
always`), so that whichever is primary loses nothing it acknowledged.
"""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING

import redis

from meshgate.testing.redis_sentinel import wait_until

if TYPE_CHECKING:
    from meshgate.testing.cluster import Cluster

MASTER = "meshgate"
REDIS_PORT = 6379  # every Redis of a cluster, each on its own address
SENTINEL_PORT = 26379


class ClusterSentinel:
    """A replica of the cluster's Redis and three sentinels watching both."""

    def __init__(
        self, cluster: Cluster, *, down_after_ms: int = 500, failover_timeout_ms: int = 3000
    ) -> None:
        self.cluster = cluster
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.replica_address = ""
        self.replica_proc: subprocess.Popen[bytes] | None = None
        self.sentinel_addresses: list[str] = []

    @property
    def url(self) -> str:
        """The `redis+sentinel://` URL the nodes are given, database 0."""
        hosts = ",".join(f"{a}:{SENTINEL_PORT}" for a in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def start(self, timeout_s: float = 30.0) -> ClusterSentinel:
        """Start the replica and the sentinels; back when the sentinels know the replica and
        one another (before then no failover could happen)."""
        c = self.cluster
        netns, self.replica_address = c.add_host("replica")
        work = c.workdir / "redis-replica"
        work.mkdir(parents=True, exist_ok=True)
        self.replica_proc = c.start_process(
            netns,
            [
                "redis-server",
                *("--bind", self.replica_address, "--port", str(REDIS_PORT)),
                *("--replicaof", c.redis_address, str(REDIS_PORT)),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                *("--dir", str(work), "--protected-mode", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(3):
            netns, address = c.add_host(f"s{i + 1}")
            work = c.workdir / f"sentinel{i + 1}"
            work.mkdir(parents=True, exist_ok=True)
            conf = work / "sentinel.conf"  # a sentinel rewrites its config: a file of its own
            conf.write_text(
                f"port {SENTINEL_PORT}\nbind {address}\ndir {work}\nprotected-mode no\n"
                f"sentinel monitor {MASTER} {c.redis_address} {REDIS_PORT} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            c.start_process(
                netns,
                ["redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.sentinel_addresses.append(address)
        wait_until(timeout_s, self._ready, "the sentinels to see the replica and each other")
        return self

    def _ready(self) -> bool:
        for address in self.sentinel_addresses:
            with _client(address, SENTINEL_PORT) as s:
                if len(s.sentinel_slaves(MASTER)) < 1 or len(s.sentinel_sentinels(MASTER)) < 2:
                    return False
        return True

    def primary(self) -> str | None:
        """The primary's address as a majority of the sentinels name it (None: no majority)."""
        votes: dict[str, int] = {}
        for address in self.sentinel_addresses:
            try:
                with _client(address, SENTINEL_PORT) as s:
                    named = s.sentinel_get_master_addr_by_name(MASTER)
            except (redis.RedisError, OSError):
                continue
            if named:
                votes[str(named[0])] = votes.get(str(named[0]), 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best is not None and best[1] >= 2 else None

    def kill_primary(self) -> str:
        """SIGKILL of whichever Redis the sentinels name primary, by its PID; its address."""
        address = self.primary()
        proc = self.replica_proc if address == self.replica_address else self.cluster.redis_proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        return address or ""

    def wait_promoted(self, old: str, timeout_s: float = 30.0) -> float:
        """Wait until the sentinels name another primary than `old` and it takes writes; the
        seconds it took."""
        start = time.monotonic()

        def promoted() -> bool:
            new = self.primary()
            if new is None or new == old:
                return False
            with _client(new, REDIS_PORT) as r:
                return bool(r.info("replication").get("role") == "master")

        wait_until(timeout_s, promoted, "a replica to be promoted")
        return time.monotonic() - start


def _client(address: str, port: int) -> redis.Redis:
    return redis.Redis(host=address, port=port, socket_timeout=1, decode_responses=True)
