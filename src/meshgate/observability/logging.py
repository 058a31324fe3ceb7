"""Log setup: human lines on a terminal, JSON lines otherwise; with the trace and span ids of
the request a line was written for, when tracing is on."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping

from meshgate.observability import tracing


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # a structured line (the audit log): its fields, flat
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if tracing.tracer is not None and (ids := tracing.current_ids()) is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A human line, ending in the trace id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # a structured line (the audit log): key=value
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
        if tracing.tracer is not None and (ids := tracing.current_ids()) is not None:
            line += f" [trace {ids[0]}]"
        return line


def configure(
    level: str = "info",
    *,
    json_lines: bool | None = None,
    modules: Mapping[str, str] | None = None,
) -> None:
    """Install one stderr handler on the root logger; `modules` sets levels of single
    loggers (`meshgate.router`: `debug`) over `level`."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    # Neither formatter shows threads or processes: not gathering them for every record is
    # the logging module's documented optimisation (a few microseconds a line; the audit log
    # writes one per tool call).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log is one line per call; keep it for debugging only.
    # So are httpx's request lines (calls to remote MCP servers).
    for name in ("uvicorn.access", "httpx"):
        logging.getLogger(name).setLevel(logging.INFO if level == "debug" else logging.WARNING)
    # The audit log is written whatever `level` is; `modules` can still quiet it.
    logging.getLogger("meshgate.audit").setLevel(logging.INFO)
    for name, module_level in (modules or {}).items():
        logging.getLogger(name).setLevel(module_level.upper())
