"""What every MCP HTTP request is checked for before an era sees it, and what both eras read.

The checks: Origin (loopback or configured, against DNS rebinding), Accept, Content-Type, the
body within its size limit and parsed as JSON, and the JSON-RPC shape of a message. A failed
check raises `Reject`, which answers at once with an HTTP status and a JSON-RPC error body.
Both eras read a request's progress token and the key that hash and sticky balancing route
it by.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from meshgate.api.guard import origin_allowed, origin_refusal
from meshgate.api.problems import LONE_SURROGATE, has_lone_surrogate, nests_deeper_than, read_body
from meshgate.api.responses import json_response
from meshgate.errors import PayloadTooLarge
from meshgate.frontend.server import McpFront
from meshgate.router import hash_key
from meshgate.wire import jsonrpc, jsontext
from meshgate.wire.jsonrpc import INVALID_REQUEST, JSON, PARSE_ERROR

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"


class Reject(Exception):
    """Answer at once with this HTTP status and a JSON-RPC error body."""

    def __init__(
        self, status: int, code: int, message: str, id_: Any = None, data: Any = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.id, self.data = status, code, message, id_, data

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return json_response(
            jsonrpc.error(self.id, self.code, self.message, self.data),
            self.status,
            headers,
            compact=True,
        )


def check_origin(request: Request, allowed: set[str]) -> None:
    """The Origin rule REST uses too (api.guard), answered in JSON-RPC."""
    origin = request.headers.get("origin")
    if not origin_allowed(origin, allowed):
        raise Reject(403, INVALID_REQUEST, origin_refusal(str(origin)).detail)


def accepts(request: Request) -> tuple[bool, bool]:
    """(JSON, SSE) acceptance, with wildcards; no Accept header accepts both."""
    header = request.headers.get("accept")
    if not header:
        return True, True
    types = {t.split(";")[0].strip().lower() for t in header.split(",")}
    wild = "*/*" in types
    return (
        wild or bool(types & {"application/json", "application/*"}),
        wild or bool(types & {"text/event-stream", "text/*"}),
    )


def check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype.lower() != "application/json":
        raise Reject(415, INVALID_REQUEST, "Content-Type must be application/json")


async def read_json(request: Request, limit: int, max_depth: int) -> Any:
    """The body as JSON, within the size and nesting limits; 413, 400 or a parse error
    otherwise."""
    try:
        raw = await read_body(request, limit)
    except PayloadTooLarge as e:
        raise Reject(413, INVALID_REQUEST, e.detail) from None
    if nests_deeper_than(raw, max_depth):
        raise Reject(
            400,
            INVALID_REQUEST,
            f"the message nests arrays and objects deeper than {max_depth} levels",
        )
    try:
        value = jsontext.loads(raw)
    except (ValueError, RecursionError) as e:
        raise Reject(400, PARSE_ERROR, f"parse error: {e}") from None
    if has_lone_surrogate(raw, value):
        raise Reject(400, PARSE_ERROR, f"parse error: {LONE_SURROGATE}")
    return value


def kind(msg: Any) -> str:
    """'request', 'notification', 'response' or 'invalid'."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return "invalid"
    if isinstance(msg.get("method"), str):
        if "id" not in msg:
            return "notification"
        id_ = msg["id"]
        ok_id = isinstance(id_, str | int) and not isinstance(id_, bool)
        params = msg.get("params")
        return "request" if ok_id and (params is None or isinstance(params, dict)) else "invalid"
    if "id" in msg and ("result" in msg or "error" in msg):
        return "response"
    return "invalid"


def obj(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def progress_token(msg: JSON) -> Any:
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


def balance_key(
    front: McpFront, target: str | None, session: str | None, client: str | None, params: JSON
) -> str | None:
    """The key hash and sticky balancing route a request by."""
    if target is None:
        return session or client
    arguments = params.get("arguments")
    return hash_key(
        front.router.pool(target),
        session=session,
        client=client,
        arguments=arguments if isinstance(arguments, dict) else {},
    )
