"""JSON-RPC 2.0 framing for newline-delimited MCP stdio streams."""

from __future__ import annotations

import re
from typing import Any

from meshgate.errors import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    REQUEST_TIMEOUT,
    RESOURCE_NOT_FOUND,
    UNSUPPORTED_PROTOCOL_VERSION,
)

# The error codes are defined once, in meshgate.errors (the bottom layer, so that errors can
# carry them); those of JSON-RPC and MCP are re-exported here for whatever speaks the protocol.
from meshgate.wire.jsontext import dumps, loads

JSON = dict[str, Any]

__all__ = [
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "JSON",
    "METHOD_NOT_FOUND",
    "MISSING_CAPABILITY",
    "PARSE_ERROR",
    "REQUEST_CANCELLED",
    "REQUEST_TIMEOUT",
    "RESOURCE_NOT_FOUND",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "JsonRpcError",
    "decode",
    "encode",
    "error",
    "notification",
    "request",
    "result",
    "sniff_id",
]


class JsonRpcError(Exception):
    """An error response from the peer: it answered, with an error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


def encode(message: JSON) -> bytes:
    """One message as a single line of UTF-8 JSON, newline-terminated."""
    return dumps(message) + b"\n"


def decode(line: bytes) -> JSON | None:
    """Parse one line; None when it is not a JSON-RPC 2.0 message."""
    try:
        msg = loads(line)
    except ValueError:
        return None
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return None
    return msg


def request(id_: int | str, method: str, params: JSON | None = None) -> JSON:
    msg: JSON = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def notification(method: str, params: JSON | None = None) -> JSON:
    msg: JSON = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def result(id_: int | str | None, value: JSON) -> JSON:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


def error(id_: int | str | None, code: int, message: str, data: Any = None) -> JSON:
    err: JSON = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


_ID_PATTERN = re.compile(rb'"id"\s*:\s*(-?\d+|"[^"]{0,128}")')


def sniff_id(fragment: bytes) -> int | str | None:
    """Find a message id in a fragment of an over-long line (its head or its tail)."""
    m = _ID_PATTERN.search(fragment)
    if m is None:
        return None
    raw = m.group(1)
    return raw[1:-1].decode(errors="replace") if raw.startswith(b'"') else int(raw)
