"""Request interceptors: an ordered chain applied to calls through the gateway.

Configured in `meshgate.toml` as `[[mesh.interceptors]]` tables, run in that order by the
router on every call, whichever entry it came by (REST, /mcp, /sse, the HTTP proxy, task enqueue
and execution). Each sees the call (`Call`) before it is routed and may change it or refuse it
with an error:

- `headers`: set headers on calls to HTTP services (`set = {"X-Env" = "prod"}`);
- `caller`: take the caller's identity from a header (`header`, default `X-Meshgate-Caller`);
  `required = true` refuses calls without one (401);
- `trace`: carry W3C trace context: the client's `traceparent` (and `tracestate`), or a new
  one, on the outgoing HTTP request and in MCP `params._meta`;
- `size_limit`: refuse request bodies (for tool calls: the JSON of the arguments) over
  `max_request_bytes` (413).

Adding one: a class with `before(call)`, a config model for its table in
`config/registration.py` (added to `InterceptorSpec`), and a line in `build_chain`.
"""

from __future__ import annotations

import re
import secrets
from typing import Protocol

from meshgate.config import (
    CallerInterceptor,
    HeadersInterceptor,
    InterceptorSpec,
    TraceInterceptor,
)
from meshgate.errors import PayloadTooLarge, Unauthenticated
from meshgate.router.call import Call

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class Interceptor(Protocol):
    def before(self, call: Call) -> None: ...


class Headers:
    def __init__(self, set: dict[str, str]) -> None:
        self.values = dict(set)

    def before(self, call: Call) -> None:
        if call.kind == "http":
            call.headers.update(self.values)


class Caller:
    def __init__(self, header: str = "X-Meshgate-Caller", required: bool = False) -> None:
        self.header = header.lower()
        self.required = required

    def before(self, call: Call) -> None:
        caller = call.incoming.get(self.header)
        if caller:
            call.caller = caller
        elif self.required and call.caller is None:
            raise Unauthenticated(
                f"calls through this gateway must name their caller in {self.header}"
            )


class Trace:
    def before(self, call: Call) -> None:
        parent = call.incoming.get("traceparent", "")
        if not TRACEPARENT.match(parent):
            parent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        state = call.incoming.get("tracestate")
        if call.kind == "http":
            call.headers["traceparent"] = parent
            if state:
                call.headers["tracestate"] = state
        else:
            call.meta["traceparent"] = parent
            if state:
                call.meta["tracestate"] = state


class SizeLimit:
    def __init__(self, max_request_bytes: int) -> None:
        self.max_request_bytes = max_request_bytes

    def before(self, call: Call) -> None:
        size = call.size()
        if size > self.max_request_bytes:
            raise PayloadTooLarge(
                f"the request body of {size} bytes exceeds the size_limit "
                f"interceptor's {self.max_request_bytes}"
            )


class Chain:
    def __init__(self, interceptors: list[Interceptor] | None = None) -> None:
        self.interceptors = interceptors or []

    def run(self, call: Call) -> Call:
        for interceptor in self.interceptors:
            interceptor.before(call)
        return call


def build_chain(specs: list[InterceptorSpec]) -> Chain:
    """The chain from the validated `[[mesh.interceptors]]` tables, in their order."""
    chain: list[Interceptor] = []
    for spec in specs:
        if isinstance(spec, HeadersInterceptor):
            chain.append(Headers(spec.set))
        elif isinstance(spec, CallerInterceptor):
            chain.append(Caller(spec.header, spec.required))
        elif isinstance(spec, TraceInterceptor):
            chain.append(Trace())
        else:
            chain.append(SizeLimit(spec.max_request_bytes))
    return Chain(chain)
