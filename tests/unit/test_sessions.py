"""Client sessions and their event streams: resumption, bounds, idle expiry."""

from __future__ import annotations

import asyncio

import pytest

from meshgate.frontend.sessions import (
    MAX_STREAMS,
    EventStream,
    SessionStore,
    TooManySessions,
    TooManySessionsForPrincipal,
)


async def _collect(stream: EventStream, after: int) -> list[tuple[str, str]]:
    return [event async for event in stream.follow(after)]


def test_a_stream_replays_after_an_event_and_ends_when_closed() -> None:
    async def main() -> None:
        stream = EventStream("s1", keep=10)
        for i in range(5):
            stream.push(f"m{i}")
        stream.close()
        assert await _collect(stream, 0) == [(f"s1.{i + 1}", f"m{i}") for i in range(5)]
        assert await _collect(stream, 3) == [("s1.4", "m3"), ("s1.5", "m4")]
        stream.push("late")  # a closed stream takes nothing more
        assert stream.last == 5

    asyncio.run(main())


def test_a_follower_gets_events_pushed_while_it_waits() -> None:
    async def main() -> None:
        stream = EventStream("s", keep=10)
        follower = asyncio.ensure_future(_collect(stream, 0))
        await asyncio.sleep(0)
        stream.push("a")
        await asyncio.sleep(0)
        stream.push("b")
        stream.close()
        assert await asyncio.wait_for(follower, 5) == [("s.1", "a"), ("s.2", "b")]

    asyncio.run(main())


def test_a_stream_keeps_only_its_newest_events() -> None:
    async def main() -> None:
        stream = EventStream("s", keep=3)
        for i in range(10):
            stream.push(str(i))
        stream.close()
        assert [data for _, data in await _collect(stream, 0)] == ["7", "8", "9"]

    asyncio.run(main())


def test_sessions_are_bounded_and_find_their_streams() -> None:
    async def main() -> None:
        store = SessionStore(max_sessions=2, idle_timeout_s=60)
        a = store.create("srv", "2025-11-25", {}, {})
        b = store.create(None, "2025-11-25", {}, {})
        a.used = b.used = True  # both in use: neither gives way
        with pytest.raises(TooManySessions) as e:
            store.create("srv", "2025-11-25", {}, {})
        assert e.value.status == 503 and e.value.retry_after
        still_open = a.new_stream()
        streams = []
        for _ in range(MAX_STREAMS * 3):  # requests answered one after another
            streams.append(a.new_stream())
            streams[-1].close()
        assert len(a.streams) <= MAX_STREAMS + 1
        assert still_open.id in a.streams  # a stream still in use is never forgotten
        newest = streams[-1]
        newest_found = a.find(f"{newest.id}.0")
        assert newest_found is not None and newest_found[0] is newest
        assert a.find("nope.1") is None and a.find("garbage") is None
        assert store.end(a.id) and not store.end(a.id)
        await store.close()

    asyncio.run(main())


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_sessions_end_and_busy_ones_stay() -> None:
    async def main() -> None:
        clock = Clock()
        store = SessionStore(max_sessions=10, idle_timeout_s=60, clock=clock)
        idle = store.create("srv", "2025-11-25", {}, {})
        seen = store.create("srv", "2025-11-25", {}, {})
        seen.used = True
        busy = store.create("srv", "2025-11-25", {}, {})
        busy.get_connected = 1  # an open GET stream
        clock.now += 40
        assert store.get(seen.id) is seen  # a request renews the session
        clock.now += 30
        store.sweep()
        assert store.get(idle.id) is None  # 70 s idle
        assert store.get(seen.id) is seen  # 30 s idle
        assert store.get(busy.id) is busy
        clock.now += 61
        store.sweep()
        assert store.get(seen.id) is None
        assert store.get(busy.id) is busy  # busy sessions never idle out
        await store.close()

    asyncio.run(main())


def test_closed_streams_are_forgotten_after_the_idle_timeout() -> None:
    async def main() -> None:
        clock = Clock()
        store = SessionStore(max_sessions=10, idle_timeout_s=60, clock=clock)
        session = store.create("srv", "2025-11-25", {}, {})
        session.get_connected = 1
        old, recent, still_open = session.new_stream(), session.new_stream(), session.new_stream()
        old.close()
        clock.now += 50
        recent.close()
        clock.now += 20
        store.sweep()
        assert old.id not in session.streams  # closed 70 s ago
        assert recent.id in session.streams and still_open.id in session.streams
        await store.close()

    asyncio.run(main())


def test_unused_sessions_end_early_and_give_way_at_the_bound() -> None:
    """A flood of initializes nobody follows up cannot hold every session for long, and
    cannot keep a new client out at all while any of its sessions is unused."""

    async def main() -> None:
        clock = Clock()
        store = SessionStore(max_sessions=50, idle_timeout_s=1800, unused_timeout_s=30, clock=clock)
        flood = [store.create("srv", "2025-11-25", {}, {}) for _ in range(50)]
        newcomer = store.create("srv", "2025-11-25", {}, {})  # the oldest unused gave way
        assert store.get(flood[0].id) is None and store.get(flood[1].id) is flood[1]
        newcomer.used = True
        assert len(store.sessions) == 50
        clock.now += 31
        store.sweep()
        assert list(store.sessions) == [newcomer.id]  # the flood is gone after 30 s, not 30 min
        clock.now += 1000
        store.sweep()
        assert store.get(newcomer.id) is newcomer  # used sessions keep the long idle timeout
        in_use = [store.create("srv", "2025-11-25", {}, {}) for _ in range(49)]
        for s in in_use:
            s.used = True
        with pytest.raises(TooManySessions, match="all in use"):
            store.create("srv", "2025-11-25", {}, {})
        await store.close()

    asyncio.run(main())


def test_each_principal_is_bounded_and_local_only_by_the_total() -> None:
    async def main() -> None:
        clock = Clock()
        store = SessionStore(
            max_sessions=20,
            idle_timeout_s=1800,
            max_per_principal=3,
            unused_timeout_s=30,
            clock=clock,
        )
        alice = [store.create(None, "2025-11-25", {}, {}, principal="alice") for _ in range(3)]
        with pytest.raises(TooManySessionsForPrincipal) as e:
            store.create(None, "2025-11-25", {}, {}, principal="alice")
        assert e.value.status == 429 and e.value.retry_after == 30
        assert "'alice'" in e.value.detail and "max_sessions_per_principal" in e.value.detail
        assert e.value.extra == {"bound": "max_sessions_per_principal", "limit": 3}
        bob = store.create(None, "2025-11-25", {}, {}, principal="bob")  # others are not held up
        assert bob.principal == "bob"
        for _ in range(10):  # the local principal (no authentication) has no bound of its own
            store.create(None, "2025-11-25", {}, {})
        assert store.end(alice[0].id)
        store.create(None, "2025-11-25", {}, {}, principal="alice")  # room again after DELETE
        for s in alice[1:]:
            s.used = True
        clock.now += 31
        store.sweep()  # alice's unused session is gone: her bound counts live sessions only
        assert store.per_principal["alice"] == 2
        store.create(None, "2025-11-25", {}, {}, principal="alice")
        await store.close()
        assert not store.per_principal

    asyncio.run(main())
