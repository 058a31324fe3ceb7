"""Attempts: one try of a call on one instance, for each kind of instance the router picks.

The router loop does everything that is the same for every kind (pick, breaker, in-flight
slot, outcome, retry, deadline); an `Attempt` does the one thing that differs: send the call to
the chosen instance and say what became of it. A failure is classified once, into a `Failure`
the loop understands: did the request reach the instance, is the instance to blame, may the
call be sent again elsewhere.

Kinds: `McpAttempt` (an MCP server instance, stdio or remote, over its connection, or a peer
node that runs the server: `router.cluster.PeerInstance`, called at its `/mcp/{server}`) and
`HttpAttempt` (an instance of a registered HTTP service, over the shared HTTP client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from opentelemetry.trace import Span

from meshgate.errors import (
    InvalidArguments,
    MeshgateError,
    NoHealthyInstance,
    UpstreamCrashed,
    UpstreamError,
    UpstreamTimeout,
)
from meshgate.observability import tracing
from meshgate.observability.measure import Measure
from meshgate.observability.metrics import metrics
from meshgate.router.call import CALLER_HEADER, HOPS_HEADER, TIMEOUT_HEADER, Call
from meshgate.router.cluster import PeerInstance
from meshgate.security.nodes import NodeCredentials
from meshgate.services.http import (
    ServiceBroken,
    ServiceClient,
    ServiceResponse,
    ServiceTimeout,
    Unreachable,
)
from meshgate.services.mesh import ServiceInstance
from meshgate.upstream.instance import Instance
from meshgate.wire.connection import ConnectionLost, ResponseTooLarge
from meshgate.wire.jsonrpc import INVALID_PARAMS, JSON, METHOD_NOT_FOUND, JsonRpcError

ProgressHandler = Callable[[str, JSON], None]
ServerRequestHandler = Callable[[str, JSON], Awaitable[JSON]]

I = TypeVar("I", contravariant=True)  # noqa: E741 - the instance kind
R = TypeVar("R")  # what an attempt returns


def _problem_kinds() -> dict[str, type[MeshgateError]]:
    kinds: dict[str, type[MeshgateError]] = {}
    todo: list[type[MeshgateError]] = [MeshgateError]
    while todo:
        kind = todo.pop()
        kinds.setdefault(kind.type, kind)
        todo.extend(kind.__subclasses__())
    return kinds


_PROBLEMS = _problem_kinds()  # a problem's type slug -> its class, for a peer's refusals


@dataclass(frozen=True)
class Failure:
    """What became of an attempt that did not return a result.

    `reached`: the request got to the instance (so the work may have been done);
    `blame`: the instance is at fault (counts on its breaker); `answered`: the instance
    answered, with an error about the request (counts as a success on its breaker);
    `retryable`: the loop may send the call elsewhere (when `reached`, only if the call is
    retry-safe); `error`: what the caller gets if it is not sent again.
    """

    error: MeshgateError
    reached: bool = True
    blame: bool = True
    answered: bool = False
    retryable: bool = False


class Attempt(Protocol[I, R]):
    """One try of a call on one instance."""

    async def send(self, inst: I, timeout: float, hurried: bool) -> R:
        """Send the call to `inst` and return its answer; raise `Failed` on failure."""
        ...

    def healthy(self, result: R) -> bool:
        """Whether an answer shows the instance working (an HTTP 502/503/504 does not)."""
        ...


class Failed(Exception):
    """An attempt failed; `failure` says how, for the router loop."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.detail)
        self.failure = failure


def attempt_outcome(error: BaseException | None) -> str:
    """The `outcome` label of one attempt, from what it raised."""
    if error is None:
        return "ok"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, Failed):
        e = error.failure.error
        if isinstance(e, UpstreamTimeout):
            return "timeout"
        if not error.failure.reached or isinstance(e, UpstreamCrashed):
            return "crashed"
    return "error"


def _client_span(name: str, instance: str, attributes: dict[str, str]) -> Span | None:
    """An attempt's client span, when this call is traced."""
    t = tracing.active()
    if t is None:
        return None
    return t.start_span(
        name,
        kind=tracing.SpanKind.CLIENT,
        attributes={"meshgate.instance": instance, **attributes},
    )


class McpAttempt:
    """A JSON-RPC request to one MCP instance over its connection."""

    def __init__(
        self,
        service: str,
        method: str,
        params: JSON,
        *,
        on_progress: ProgressHandler | None = None,
        on_server_request: ServerRequestHandler | None = None,
        call: Call | None = None,
        credentials: NodeCredentials | None = None,
        peer_down_s: float = 5.0,
    ) -> None:
        self.service = service
        self.method = method
        self.params = params
        self.on_progress = on_progress
        self.on_server_request = on_server_request
        self.call = call
        self.credentials = credentials
        self.peer_down_s = peer_down_s

    async def send(self, inst: Instance, timeout: float, hurried: bool) -> JSON:
        if isinstance(inst, PeerInstance):
            return await self._send_peer(inst, timeout, hurried)
        params = self.params
        span = _client_span(f"{self.method} {inst.id}", inst.id, {"rpc.method": self.method})
        if span is not None:  # the trace goes on in the server
            meta = params.get("_meta")
            params = {**params, "_meta": {**(meta or {}), **tracing.inject(span)}}
        with Measure(partial(metrics.attempt, inst.server, inst.id), attempt_outcome, span):
            try:
                return await inst.conn.request(
                    self.method,
                    params,
                    timeout=timeout,
                    on_progress=self.on_progress,
                    on_server_request=self.on_server_request,
                )
            except JsonRpcError as e:
                # The instance answered: it is working, whatever it thinks of the request.
                raise Failed(Failure(self._rpc_error(e), blame=False, answered=True)) from None
            except TimeoutError:
                raise Failed(
                    Failure(
                        UpstreamTimeout(
                            f"{inst.id} did not answer {self.method} within "
                            + ("the caller's deadline" if hurried else "the deadline")
                        ),
                        blame=not hurried,
                    )
                ) from None
            except ResponseTooLarge as e:
                raise Failed(Failure(UpstreamError(f"{inst.id}: {e}"))) from None
            except ConnectionLost as e:
                raise Failed(
                    Failure(
                        UpstreamCrashed(f"{inst.id} exited while {self.method} was in flight"),
                        reached=e.sent,
                        retryable=True,
                    )
                ) from None

    async def _send_peer(self, inst: PeerInstance, timeout: float, hurried: bool) -> JSON:
        """The call through a peer node's `/mcp/{server}`: what is left of the deadline, one
        more hop, and the caller asserted under this node's signature."""
        call = self.call
        headers = {
            TIMEOUT_HEADER: f"{timeout:.3f}",
            HOPS_HEADER: str((call.hops if call is not None else 0) + 1),
        }
        if call is not None and call.caller:
            headers[CALLER_HEADER] = call.caller
        if self.credentials is not None and call is not None:
            headers.update(self.credentials.sign(call.principal, inst.path))
        params = self.params
        span = _client_span(f"{self.method} {inst.id}", inst.id, {"rpc.method": self.method})
        if span is not None:
            meta = params.get("_meta")
            params = {**params, "_meta": {**(meta or {}), **tracing.inject(span)}}
        where = f"node {inst.peer.id}"
        with Measure(partial(metrics.attempt, inst.server, inst.id), attempt_outcome, span):
            try:
                return await inst.http.request(
                    self.method,
                    params,
                    timeout=timeout,
                    on_progress=self.on_progress,
                    on_server_request=self.on_server_request,
                    headers=headers,
                )
            except JsonRpcError as e:
                raise Failed(self._peer_error(e, where)) from None
            except TimeoutError:
                # The peer's breaker judges the node, not its servers: a slow server there is
                # that node's to judge (it had the same deadline), and must not close the way
                # to the node's other servers.
                raise Failed(
                    Failure(
                        UpstreamTimeout(
                            f"{where} did not answer {self.method} for {self.service} within "
                            + ("the caller's deadline" if hurried else "the deadline")
                        ),
                        blame=False,
                    )
                ) from None
            except ConnectionLost as e:
                if not e.sent:
                    inst.unreachable(self.peer_down_s)
                    raise Failed(
                        Failure(
                            NoHealthyInstance(f"{self.service}: {where} cannot be reached"),
                            reached=False,
                            retryable=True,
                        )
                    ) from None
                raise Failed(
                    Failure(
                        UpstreamCrashed(f"{where} failed while {self.method} was in flight: {e}"),
                        retryable=True,
                    )
                ) from None

    def _peer_error(self, e: JsonRpcError, where: str) -> Failure:
        """A peer's JSON-RPC error: its own refusal (a meshgate problem in `data`) passes on
        as the same problem; its server's error as the server's."""
        data = e.data if isinstance(e.data, dict) else {}
        status = data.get("http_status")
        if status is not None:  # not an MCP answer: the node refused this node's request
            return Failure(
                UpstreamError(
                    f"{where} refused the forwarded request with HTTP {status}"
                    + (" (is cluster_secret the same on every node?)" if status == 401 else "")
                )
            )
        kind = _PROBLEMS.get(str(data.get("type")))
        if kind is None:
            return Failure(self._rpc_error(e), blame=False, answered=True)
        extra = {k: v for k, v in data.items() if k not in ("type", "status", "retry_after_s")}
        retry_after = data.get("retry_after_s")
        error = kind(
            f"{e.message} (at {where})",
            extra=extra,
            retry_after=retry_after if isinstance(retry_after, int | float) else None,
        )
        return Failure(error, blame=False, answered=True)

    def healthy(self, result: JSON) -> bool:
        return True

    def _rpc_error(self, e: JsonRpcError) -> MeshgateError:
        extra: dict[str, Any] = {"upstream_code": e.code, "upstream_message": e.message}
        if e.data is not None:
            extra["upstream_data"] = e.data
        if e.code == INVALID_PARAMS:
            return InvalidArguments(
                f"{self.service} rejected the arguments: {e.message}", extra=extra
            )
        if e.code == METHOD_NOT_FOUND:
            return UpstreamError(
                f"{self.service} does not support {self.method}: {e.message}", extra=extra
            )
        return UpstreamError(
            f"{self.service} answered {self.method} with an error: {e.message}", extra=extra
        )


class HttpAttempt:
    """One HTTP request to one instance of a registered service; the response comes back with
    its body unread (the caller streams it, then closes it)."""

    def __init__(
        self,
        client: ServiceClient,
        method: str,
        path: str,
        *,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes],
        hops: int,
    ) -> None:
        self.client = client
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.hops = hops

    async def send(self, inst: ServiceInstance, timeout: float, hurried: bool) -> ServiceResponse:
        # The next hop gets what is left of the deadline and one more hop.
        headers = [
            *self.headers,
            (TIMEOUT_HEADER, f"{timeout:.3f}"),
            (HOPS_HEADER, str(self.hops + 1)),
        ]
        url = inst.reg.base_url + self.path + (f"?{self.query}" if self.query else "")
        span = _client_span(f"{self.method} {inst.id}", inst.id, {"url.path": self.path})
        if span is not None:  # the trace goes on in the service
            context = tracing.inject(span)
            headers = [(k, v) for k, v in headers if k.lower() not in context]
            headers += context.items()
        what = f"{self.method} {self.path}"
        with Measure(partial(metrics.attempt, inst.service, inst.id), attempt_outcome, span) as m:
            try:
                response = await self.client.request(
                    self.method, url, headers=headers, body=self.body, timeout=timeout
                )
            except Unreachable as e:
                raise Failed(
                    Failure(
                        UpstreamError(f"{inst.id}: cannot connect: {e}"),
                        reached=False,
                        retryable=True,
                    )
                ) from None
            except ServiceTimeout:
                raise Failed(
                    Failure(
                        UpstreamTimeout(
                            f"{inst.id} did not answer {what} within "
                            + ("the caller's deadline" if hurried else "the deadline")
                        ),
                        blame=not hurried,
                    )
                ) from None
            except ServiceBroken as e:
                raise Failed(
                    Failure(UpstreamCrashed(f"{inst.id} failed mid-request: {e}"), retryable=True)
                ) from None
            if response.status_code >= 500:
                m.outcome = "error"
            return response

    def healthy(self, result: ServiceResponse) -> bool:
        return result.status_code not in (502, 503, 504)
