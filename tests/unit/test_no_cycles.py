"""What every MCP request makes is freed when it is dropped, not left for the garbage
collector: a reference cycle per request is collector time on every call."""

from __future__ import annotations

import asyncio
import gc
import weakref

from meshgate.api.mcp_http.streaming import Channel


def test_a_channel_is_freed_by_its_last_reference() -> None:
    async def make() -> weakref.ref[Channel]:
        channel = Channel(1, None, sse=True)
        assert channel.emit is not None
        channel.finish((200, {"jsonrpc": "2.0", "id": 1, "result": {}}))
        return weakref.ref(channel)

    gc.disable()  # only reference counting may free it
    try:
        ref = asyncio.run(make())
        assert ref() is None
    finally:
        gc.enable()
