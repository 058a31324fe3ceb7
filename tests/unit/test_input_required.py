"""Parked calls and request states for input_required rounds."""

from __future__ import annotations

import asyncio

import pytest

from meshgate.frontend.input_required import ParkedCalls, unwrap_state, wrap_state
from meshgate.wire.jsonrpc import JsonRpcError


def test_wrapped_states_round_trip_and_refuse_tampering() -> None:
    token = wrap_state("srv-1", "their-state")
    assert unwrap_state(token) == ("srv-1", "their-state")
    assert unwrap_state(wrap_state("srv-2", None)) == ("srv-2", None)
    assert unwrap_state(token + "-TAMPERED") is None
    assert unwrap_state(token[:-3] + "abc") is None
    assert unwrap_state("u.garbage") is None


def test_a_parked_call_asks_gets_answers_and_finishes() -> None:
    async def main() -> None:
        calls = ParkedCalls(ttl_s=30)
        parked = calls.park("tools/call", "t")

        async def server() -> str:
            first = await parked.ask(
                "elicitation/create", {"message": "name?", "_meta": {"dev.meshgate/inputKey": "n"}}
            )
            return str(first["content"]["name"])

        parked.task = asyncio.ensure_future(server())
        assert await parked.next() is False
        questions = parked.open_questions()
        assert list(questions) == ["n"] and "_meta" not in questions["n"]["params"]
        state = calls.state(parked)
        with pytest.raises(JsonRpcError):
            calls.claim(state + "x", "tools/call", "t")
        with pytest.raises(JsonRpcError):
            calls.claim(state, "tools/call", "other")  # another request's state
        claimed = calls.claim(state, "tools/call", "t")
        claimed.answer({"n": {"action": "accept", "content": {"name": "Ada"}}, "extra": {}})
        assert await parked.next() is True
        assert parked.task.result() == "Ada"
        assert calls.state(parked) != state  # each round has its own state

    asyncio.run(main())


def test_an_abandoned_parked_call_expires_and_is_cancelled() -> None:
    async def main() -> None:
        now = [1000.0]
        calls = ParkedCalls(ttl_s=60, clock=lambda: now[0])
        parked = calls.park("tools/call", "t")
        parked.task = asyncio.ensure_future(parked.ask("roots/list", {}))
        assert await parked.next() is False
        calls.state(parked)  # the question went back to the client, who never returns
        now[0] += 59
        calls.expire()
        assert calls.calls  # not yet
        now[0] += 2
        calls.expire()
        assert not calls.calls
        with pytest.raises(asyncio.CancelledError):  # the upstream call is cancelled
            await parked.task

    asyncio.run(main())
