"""Seeing the gateway work: Prometheus metrics, OpenTelemetry tracing, one `Measure` for a
call or an attempt, JSON or text logs with trace ids, and the caller -> callee topology."""
