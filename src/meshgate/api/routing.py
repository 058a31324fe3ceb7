"""A route class for the hot path.

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
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handle


T = TypeVar("T")


async def unless_disconnected(request: Request, call: Awaitable[T]) -> T:
    """Run the call; if the client goes away first, cancel it (which cancels upstream too)."""
    task = asyncio.ensure_future(call)
    watch = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and watch.done() and watch.result().get("type") == "http.disconnect":
            task.cancel()
        return await task
    finally:
        for fut in (task, watch):
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fut
