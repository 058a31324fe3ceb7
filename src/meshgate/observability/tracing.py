"""OpenTelemetry tracing: a span per incoming request, per routed call and per attempt.

The W3C `traceparent` of an incoming request is the parent of its span; an attempt's own
context goes on to the upstream, in the HTTP headers of a proxied call and in `params._meta`
(`traceparent`, `tracestate`) of an MCP request. Sampling is decided once, where a trace
enters the gateway (an HTTP request, a task): a `traceparent` decides by its sampled flag,
otherwise `trace_sample_ratio` does. An unsampled request makes no spans at all, so it costs
what tracing off costs. Recorded traces are kept in memory, the last `traces_kept`, for
`GET /api/v1/mesh/v2/traces`; when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set they are exported over OTLP/HTTP too, configured by
the standard `OTEL_*` variables.

With `tracing = false`, `tracer` is None and no code of this module runs on a call: the hot path
tests one global.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, use_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshgate import __version__

T = TypeVar("T")
tracer: Tracer | None = None
sample_ratio = 0.0
recent: RecentTraces | None = None
_provider: TracerProvider | None = None
PROPAGATOR = TraceContextTextMapPropagator()
MAX_SPANS_PER_TRACE = 256
# What probes and dashboards poll: their traces would crowd out the calls'.
UNTRACED = frozenset({"/metrics", "/livez", "/readyz", "/api/v1/mesh/v2/traces"})
__all__ = ["SpanKind", "StatusCode", "use_span"]  # what callers take from here, re-exported


class RecentTraces(SpanProcessor):
    """The last `keep` traces' finished spans, in memory."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._traces: OrderedDict[int, list[ReadableSpan]] = OrderedDict()
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        with self._lock:
            spans = self._traces.get(context.trace_id)
            if spans is None:
                self._traces[context.trace_id] = [span]
                while len(self._traces) > self.keep:
                    self._traces.popitem(last=False)
            elif len(spans) < MAX_SPANS_PER_TRACE:
                spans.append(span)

    def traces(self, limit: int) -> list[dict[str, Any]]:
        """The newest traces first, each summarised by its root (or earliest) span."""
        with self._lock:
            items = list(self._traces.items())[-limit:]
        return [_summary(trace_id, spans) for trace_id, spans in reversed(items)]

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        try:
            key = int(trace_id, 16)
        except ValueError:
            return None
        with self._lock:
            spans = list(self._traces.get(key, ()))
        if not spans:
            return None
        return {**_summary(key, spans), "spans": [_span(s) for s in _ordered(spans)]}


def _ordered(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return sorted(spans, key=lambda s: s.start_time or 0)


def _root(spans: list[ReadableSpan]) -> ReadableSpan:
    ids = {s.context.span_id for s in spans if s.context is not None}
    roots = [s for s in spans if s.parent is None or s.parent.span_id not in ids]
    return _ordered(roots or spans)[0]


def _ms(start: int | None, end: int | None) -> float | None:
    return round((end - start) / 1e6, 3) if start is not None and end is not None else None


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds = ns / 1e9
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000000 % 1000:03d}Z"
    )


def _summary(trace_id: int, spans: list[ReadableSpan]) -> dict[str, Any]:
    root = _root(spans)
    start = min(s.start_time or 0 for s in spans)
    end = max(s.end_time or 0 for s in spans)
    return {
        "trace_id": format(trace_id, "032x"),
        "name": root.name,
        "start": _iso(start),
        "duration_ms": _ms(start, end),
        "spans": len(spans),
        "error": any(s.status.status_code is StatusCode.ERROR for s in spans),
    }


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    return {
        "span_id": format(context.span_id, "016x") if context else None,
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "start": _iso(span.start_time),
        "duration_ms": _ms(span.start_time, span.end_time),
        "status": span.status.status_code.name.lower(),
        "attributes": dict(span.attributes or {}),
    }


def setup(*, enabled: bool, ratio: float, keep: int, node: str) -> None:
    """Turn tracing on (or leave it off) for this process."""
    global tracer, recent, _provider, sample_ratio
    if not enabled:
        tracer, recent, _provider = None, None, None
        return
    sample_ratio = ratio
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": "meshgate",
                "service.version": __version__,
                "service.instance.id": node,
            }
        ),
        sampler=ALWAYS_ON,  # the decision is taken where a trace enters: `sampled`
    )
    recent = RecentTraces(keep)
    provider.add_span_processor(recent)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    tracer = provider.get_tracer("meshgate", __version__)


def shutdown() -> None:
    """Export what is still batched, then stop."""
    if _provider is not None:
        _provider.shutdown()


async def within(span: Span | None, work: Awaitable[T]) -> T:
    """Await `work` with `span` current (the parent of what it starts), if there is one."""
    if span is None:
        return await work
    with use_span(span, end_on_exit=False):
        return await work


def active() -> Tracer | None:
    """The tracer, when the work at hand belongs to a recorded trace; None otherwise (tracing
    off, or an unsampled request): then no span is made."""
    t = tracer
    if t is None or not trace.get_current_span().is_recording():
        return None
    return t


def sampled(carrier: Mapping[str, str]) -> bool:
    """Whether a trace entering here is recorded: as its `traceparent` says, else by ratio."""
    parent = carrier.get("traceparent")
    if parent is not None and len(parent) == 55 and parent[2] == "-":
        try:
            return bool(int(parent[53:55], 16) & 1)
        except ValueError:
            pass
    return random.random() < sample_ratio


def extract(headers: Mapping[str, str]) -> Context:
    """The context an incoming request's `traceparent` and `tracestate` name."""
    return PROPAGATOR.extract(carrier=headers)


def inject(span: Span | None = None) -> dict[str, str]:
    """`traceparent` (and `tracestate`) naming `span` (default: the current one), for an
    upstream request or a task's record."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span) if span else None)
    return carrier


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the span current here, for log lines."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def end(span: Span, error: BaseException | None) -> None:
    """End a span, marked as an error when `error` is one."""
    if error is not None:
        span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200])
        span.set_attribute("error.type", type(error).__name__)
    span.end()


class TracingMiddleware:
    """A server span for every HTTP request, child of the client's `traceparent`; named by the
    route that served it (`POST /mcp/{name}`), not the path, so names stay few."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        t = tracer
        if t is None or scope["type"] != "http" or scope["path"] in UNTRACED:
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate")
        }
        if not sampled(carrier):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        span = t.start_span(
            f"{method} {scope['path']}",
            context=extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )

        async def traced_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
            await send(message)

        error: BaseException | None = None
        try:
            with use_span(span, end_on_exit=False, record_exception=False):
                await self.app(scope, receive, traced_send)
        except BaseException as e:
            error = e
            raise
        finally:
            route = scope.get("route")
            if route is not None and getattr(route, "path", None):
                span.update_name(f"{method} {route.path}")
            end(span, error)
