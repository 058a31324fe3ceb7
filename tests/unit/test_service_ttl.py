"""Registration TTLs of HTTP services, on a clock the test moves: heartbeats keep an instance,
silence past its TTL removes it from the mesh, the durable store and the registry."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from meshgate.config import Registration
from meshgate.registry import EmbeddedRegistry
from meshgate.registry.store import RegistrationStore
from meshgate.services.mesh import ServiceMesh

pytestmark = pytest.mark.timeout(60)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_heartbeats_keep_an_instance_and_silence_past_its_ttl_removes_it(tmp_path: Path) -> None:
    async def main(port: int) -> None:
        clock = Clock()
        store = RegistrationStore(tmp_path / "registry.sqlite3")
        registry = EmbeddedRegistry()
        mesh = ServiceMesh(store, registry, node="n1", clock=clock)
        check = {"type": "tcp", "interval_s": 3600}  # checks play no part here

        def reg(name: str, ttl_s: float | None) -> Registration:
            return Registration.model_validate(
                {"name": name, "id": name, "address": "127.0.0.1", "port": port, "check": check}
                | ({"ttl_s": ttl_s} if ttl_s else {})
            )

        try:
            mesh.register(reg("beating", 10))
            mesh.register(reg("silent", 10))
            mesh.register(reg("forever", None))
            clock.now += 9
            assert mesh.expire() == []  # within the TTL
            assert mesh.heartbeat("beating", "beating") is not None
            clock.now += 9  # 18 s since "silent" registered, 9 since the heartbeat
            assert mesh.expire() == ["silent"]
            assert set(mesh.instances) == {"beating", "forever"}
            assert store.get("silent") is None and registry.get("silent") is None
            assert mesh.heartbeat("silent", "silent") is None  # too late: it must register again
            clock.now += 10.5
            assert mesh.expire() == ["beating"]
            clock.now += 86_400
            assert mesh.expire() == []  # no TTL: never expires
            assert set(mesh.instances) == {"forever"} and store.get("forever") is not None
        finally:
            await mesh.stop()
            store.close()

    with socket.socket() as listener:  # a real endpoint for the one check each instance runs
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        asyncio.run(main(listener.getsockname()[1]))
