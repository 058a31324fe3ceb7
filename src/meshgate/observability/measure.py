"""One way to observe a call or an attempt: its duration and outcome recorded, its span (if the
work is traced) current while it runs and ended with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from opentelemetry.trace import Span

from meshgate.observability import tracing


class Measure:
    """`with Measure(record, classify, span) as m:` times the block; on exit `record(outcome,
    seconds)` gets `m.outcome` (when the block set one and raised nothing), or `classify` of
    what it raised, or `ok`."""

    __slots__ = ("_scope", "_started", "classify", "outcome", "record", "span")

    def __init__(
        self,
        record: Callable[[str, float], None],
        classify: Callable[[BaseException | None], str],
        span: Span | None = None,
    ) -> None:
        self.record = record
        self.classify = classify
        self.span = span
        self.outcome: str | None = None
        self._scope: Any = None

    def __enter__(self) -> Measure:
        self._started = time.perf_counter()
        if self.span is not None:
            self._scope = tracing.use_span(self.span, end_on_exit=False)
            self._scope.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._scope is not None:
            self._scope.__exit__(kind, error, traceback)
        outcome = self.classify(error) if error is not None else self.outcome or "ok"
        self.record(outcome, time.perf_counter() - self._started)
        if self.span is not None:
            tracing.end(self.span, error)
