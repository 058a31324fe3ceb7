"""The hot path's route class, the proxy's response, and the disconnect watch.

FastAPI resolves an endpoint's parameters through its dependency machinery on every request.
On the tool-call route that costs about a fifth of the gateway's throughput (measured with
bench/bench_echo.py, concurrency 16, same machine, alternating runs: 3450-3750 calls/s
through FastAPI's handler, 4630-4650 through this one), and the endpoint reads its own body
anyway. `DirectRoute` keeps the endpoint's signature for OpenAPI, but at request time
calls it with the request and the path parameters only, skipping dependency resolution.
Endpoints using it must take `request` plus path parameters, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from meshgate.services.http import ServiceBroken, ServiceResponse


class IndexedHeaders(Headers):
    """A request's headers looked up in a dict made once (the first value of a repeated name,
    as `Headers` answers), not by a scan of the list that raises KeyError for every absent
    name: a POST to /mcp asks for eight names, most of them absent (8 lookups: 13 -> 3 us)."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        self._index = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(self._list)}

    def get(self, key: str, default: Any = None) -> Any:
        return self._index.get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return self._index[key.lower()]

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in self._index


class IndexedRequest(Request):
    """A Request whose headers are `IndexedHeaders`."""

    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_headers"):
            self._headers = IndexedHeaders(self.scope)
        return self._headers


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handle


T = TypeVar("T")

# A call answered sooner never needs to know whether its client is still there: watching
# costs a task and its wake-ups, about 10 us of a call's CPU (bench/RESULTS.md, 2026-11-30).
WATCH_AFTER_S = 0.05


class DisconnectWatch:
    """Calls `on_gone` once the client has gone, until stopped; it starts watching only
    after WATCH_AFTER_S, so most calls end before any watching starts."""

    def __init__(self, request: Request, on_gone: Callable[[], object]) -> None:
        self.request = request
        self.on_gone = on_gone
        self.task: asyncio.Task[None] | None = None
        self.over = False
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self.task = asyncio.ensure_future(disconnected(self.request))
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # A watch that failed (the server's receive raised) says nothing of the client.
        if not task.cancelled() and task.exception() is None and not self.over:
            self.on_gone()

    def stop(self) -> None:
        self.over = True  # a wake-up already scheduled must not act any more
        self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


async def unless_disconnected(request: Request, call: Awaitable[T]) -> T:
    """Run the call; if the client goes away first, cancel it (which cancels upstream too)."""
    me = asyncio.current_task()
    assert me is not None
    watch = DisconnectWatch(request, me.cancel)
    try:
        return await call
    finally:
        watch.stop()


async def disconnected(request: Request) -> None:
    """Return once the client has gone. The messages before are the request's body, if the
    handler has not read it (a GET's empty body): passed over, or the watch would end on one."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ProxiedResponse(Response):
    """An HTTP service's answer passed on: its head at once, its body as it arrives.

    A body that came whole with its head (most answers) goes out in one message, with no task
    beside it. Any other streams, watched by one task that closes the service's response when
    the client goes away, so that a stream with nothing to send for a while (before its first
    bytes, too) does not keep its connection after its reader left. (Starlette's
    StreamingResponse starts a task group and a listener for every response, and needs a
    BackgroundTask to close the upstream.)
    """

    def __init__(self, upstream: ServiceResponse, headers: list[tuple[bytes, bytes]]) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.raw_headers = headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream = self.upstream
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if upstream.arrived:
                await send({"type": "http.response.body", "body": await upstream.read_chunk()})
                return
            watch = asyncio.ensure_future(_close_on_disconnect(receive, upstream))
            try:
                while chunk := await upstream.read_chunk():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            except ServiceBroken:
                if not watch.done():
                    raise  # the service failed mid-body: the client's connection is cut
                # else: the client left and the watch closed the service's response
            finally:
                watch.cancel()
        finally:
            upstream.close()


async def _close_on_disconnect(receive: Receive, upstream: ServiceResponse) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    upstream.close()
