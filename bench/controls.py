"""Control servers for bench_mcp.py: what the same wrk run costs with nothing of meshgate.

    uvicorn --app-dir bench controls:fixed       # answers every POST with a fixed reply
    uvicorn --app-dir bench controls:stdio_floor # sends it to the fault server, as meshgate does

Both run on uvicorn with uvloop and httptools, as meshgate does. `fixed` is the HTTP server
alone: its latency tail is the machine's and the server's, not meshgate's. `stdio_floor`
parses the request, sends `tools/call` to one fault server process over meshgate's own
`StdioConnection` and answers with its reply: the least a gateway of this design does, with
no session, checks, routing, metrics or tracing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench_echo import SERVERS
from meshgate.upstream.stdio import StdioConnection

FIXED = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}]}}
).encode()

Scope = dict[str, Any]


async def _body(receive: Any) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _answer(send: Any, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any, start: Any = None) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if start is not None:
                await start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def fixed(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        await _body(receive)
        await _answer(send, FIXED)


_conn: list[StdioConnection] = []


async def _start_server() -> None:
    cmd, _, _ = SERVERS["fault"]
    loop = asyncio.get_running_loop()
    _, conn = await loop.subprocess_exec(
        lambda: StdioConnection(label="fault", max_line_bytes=1 << 24, stderr_lines=10), *cmd
    )
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c"}}
    await conn.request("initialize", init, timeout=30)
    conn.notify("notifications/initialized")
    _conn.append(conn)


async def stdio_floor(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, _start_server)
    elif scope["type"] == "http":
        msg = json.loads(await _body(receive))
        result = await _conn[0].request(msg["method"], msg.get("params"), timeout=30)
        reply = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
        await _answer(send, json.dumps(reply, separators=(",", ":")).encode())
