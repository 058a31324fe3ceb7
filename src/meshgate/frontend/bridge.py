"""Bridging one client request to a server through the router: the instance a session is
held to (sticky and dedicated modes), the server's progress and log messages relayed to the
client, and a stateless server's `input_required` rounds passed on or answered by asking the
client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meshgate.frontend.context import LOG_LEVELS, Asker, RequestContext
from meshgate.frontend.input_required import WRAPPED_PREFIX, unwrap_state, wrap_state
from meshgate.router import Pin, Router
from meshgate.router.call import Call
from meshgate.upstream.instance import Instance
from meshgate.upstream.supervisor import ServerPool
from meshgate.wire.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, JSON, JsonRpcError

MAX_INPUT_ROUNDS = 16


class Bridge:
    """Calls a server for one client request, in the client's era and mode."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def call(
        self,
        server: str,
        method: str,
        params: JSON,
        ctx: RequestContext,
        *,
        retry_safe: bool,
        call: Call | None = None,
    ) -> JSON:
        """Call a server through the router, and bridge its `input_required` results.

        A stateless (2026-07-28) server asks its client things by answering `input_required`.
        A stateless client gets that result as is, its `requestState` wrapped to name the
        instance that holds the call; its retry goes back there. For a handshake-era client
        the gateway asks it each question (as server-to-client requests) and retries on the
        same instance with the answers, until the server is done.
        """
        pool = self.router.pool(server)
        pin = await self._pin(pool, ctx)
        state = params.get("requestState")
        if isinstance(state, str) and state.startswith(WRAPPED_PREFIX):
            pin, params = self._unwrap(pool, state, params)
        chosen: list[Instance] = []
        if call is None:
            call = ctx.call(server, method, method=method)
        for _ in range(MAX_INPUT_ROUNDS):
            result = await self.router.call(
                server,
                method,
                params,
                call=call,
                key=ctx.key,
                retry_safe=retry_safe,
                on_progress=self._relay(ctx),
                on_server_request=self._asker(ctx),
                pin=pin,
                on_instance=chosen.append,
            )
            if result.get("resultType") != "input_required" or not chosen:
                return result
            inst = chosen[-1]
            if ctx.stateless:
                return {**result, "requestState": wrap_state(inst.id, result.get("requestState"))}
            answers = await self._answer_inputs(result.get("inputRequests"), ctx)
            params = {k: v for k, v in params.items() if k != "requestState"}
            params["inputResponses"] = answers
            if isinstance(result.get("requestState"), str):
                params["requestState"] = result["requestState"]
            pin = Pin()
            pin.instance = inst
        raise JsonRpcError(
            INTERNAL_ERROR,
            f"{server} asked for input more than {MAX_INPUT_ROUNDS} times in one call",
        )

    def _unwrap(self, pool: ServerPool, state: str, params: JSON) -> tuple[Pin, JSON]:
        unwrapped = unwrap_state(state)
        inst = pool.instance(unwrapped[0]) if unwrapped is not None else None
        if unwrapped is None or inst is None:
            raise JsonRpcError(
                INVALID_PARAMS,
                "requestState is not valid here (altered, or its instance is gone); send the "
                "request again without it",
            )
        pin = Pin()
        pin.instance = inst
        params = {k: v for k, v in params.items() if k != "requestState"}
        if unwrapped[1] is not None:
            params["requestState"] = unwrapped[1]
        return pin, params

    async def _answer_inputs(self, requests: Any, ctx: RequestContext) -> JSON:
        """Ask a handshake-era client (or a task's client) a stateless server's questions, all
        at once."""
        if not isinstance(requests, dict):
            return {}
        asker = Asker(ctx)

        async def one(key: str, request: JSON) -> tuple[str, JSON]:
            params = request.get("params") if isinstance(request.get("params"), dict) else {}
            try:
                return key, await asker(request["method"], params or {})
            except JsonRpcError as e:
                return key, {"error": {"code": e.code, "message": e.message}}

        asked = [
            one(key, request)
            for key, request in requests.items()
            if isinstance(request, dict) and isinstance(request.get("method"), str)
        ]
        return dict(await asyncio.gather(*asked))

    async def _pin(self, pool: ServerPool, ctx: RequestContext) -> Pin | None:
        """A handshake-era session's instance of a sticky or dedicated server. Requests
        without a session (stateless, REST) are served by the pool's instances as shared."""
        mode = pool.policy.mode
        if mode == "shared" or ctx.pins is None:
            return None
        pin = ctx.pins.setdefault(pool.name, Pin())
        if mode == "dedicated":
            async with pin.lock:
                if pin.instance is None:
                    pin.instance = await pool.claim(pool.policy.startup_timeout_s)
                    pin.release = pool.release
                    self._bind_session(pin.instance, ctx)
        return pin

    def _bind_session(self, inst: Instance, ctx: RequestContext) -> None:
        """A dedicated process talks to its session only: what it sends outside a request
        goes to the session's standing stream."""
        asker = Asker(
            RequestContext(
                ctx.version,
                ctx.stateless,
                principal=ctx.principal,
                ask=ctx.session_ask,
                client_capabilities=ctx.client_capabilities,
            )
        )
        inst.conn.on_request = asker
        session_emit = ctx.session_emit

        def on_notification(method: str, params: JSON) -> None:
            if session_emit is not None and method.startswith("notifications/"):
                session_emit({"jsonrpc": "2.0", "method": method, "params": params})

        inst.conn.on_notification = on_notification

    def _asker(self, ctx: RequestContext) -> Asker:
        return Asker(ctx)

    def _relay(self, ctx: RequestContext) -> Callable[[str, JSON], None] | None:
        """Pass what an upstream sends about this request on to the client: progress under the
        client's own token, log messages at or above the client's level."""
        emit, token = ctx.emit, ctx.progress_token
        if emit is None or (token is None and not ctx.send_logs):
            return None
        floor = LOG_LEVELS.index(ctx.log_level) if ctx.log_level in LOG_LEVELS else 0

        def relay(method: str, params: JSON) -> None:
            if method == "notifications/progress":
                if token is not None:
                    params = {**params, "progressToken": token}
                    emit({"jsonrpc": "2.0", "method": method, "params": params})
            elif method == "notifications/message" and ctx.send_logs:
                level = params.get("level")
                if level not in LOG_LEVELS or LOG_LEVELS.index(level) >= floor:
                    emit({"jsonrpc": "2.0", "method": method, "params": params})

        return relay
