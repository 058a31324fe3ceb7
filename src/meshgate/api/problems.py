"""RFC 9457 problem details: the one place where errors become HTTP responses."""

from __future__ import annotations

import json
import logging
import math
import re
from itertools import accumulate
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from meshgate.api.redaction import hide_paths
from meshgate.api.responses import json_response
from meshgate.errors import InvalidArguments, InvalidInput, MeshgateError, NotFound, PayloadTooLarge
from meshgate.security import principal_of

log = logging.getLogger("meshgate.api")

PROBLEM_JSON = "application/problem+json"


CONSUL_PREFIX = "/v1/"
"""The Consul-compatible API (api/consul.py): its errors are Consul's plain text, not problems."""


def problem_response(err: MeshgateError, instance: str | None = None) -> Response:
    headers = dict(err.headers)
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if instance is not None and instance.startswith(CONSUL_PREFIX):
        return consul_error(err, headers)
    return json_response(err.to_problem(instance), err.status, headers, media_type=PROBLEM_JSON)


def consul_error(err: MeshgateError, headers: dict[str, str]) -> Response:
    """An error as Consul answers it, which its clients read: a plain-text sentence, 403 for
    a missing, unknown or insufficient token ("ACL not found", "Permission denied"), 400 for
    any input refused (meshgate's 422 too)."""
    status, text = err.status, err.detail
    if status == 401:
        headers.pop("WWW-Authenticate", None)
        missing = err.extra.get("error") == "missing_token"
        status = 403
        text = f"Permission denied: {text}" if missing else f"ACL not found: {text}"
    elif status == 403 and not text.startswith("Permission denied"):
        text = f"Permission denied: {text}"
    elif status == 422:
        status = 400
    return Response(text, status_code=status, media_type="text/plain", headers=headers)


async def _meshgate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MeshgateError)
    if exc.status >= 500:
        log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.detail)
    if not principal_of(request.scope).is_admin:
        exc.detail = hide_paths(exc.detail)
        exc.extra = hide_paths(exc.extra)
    return problem_response(exc, request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err: MeshgateError
    if exc.status_code == 404:
        err = NotFound(f"no route {request.url.path}")
    else:
        err = MeshgateError(str(exc.detail))
        err.status, err.type, err.title = (
            exc.status_code,
            f"http-{exc.status_code}",
            str(exc.detail),
        )
    return problem_response(err, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()
    ]
    return problem_response(
        InvalidArguments("request validation failed", extra={"errors": errors}),
        request.url.path,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(MeshgateError, _meshgate_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with PayloadTooLarge past `limit` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


DEFAULT_MAX_JSON_DEPTH = 64

# A JSON string, escapes included (brackets inside it do not nest); an unterminated one runs
# to the end, so that no input makes the scan start over (and take quadratic time).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def nests_deeper_than(raw: bytes, depth: int) -> bool:
    """Whether arrays and objects in `raw` nest more than `depth` deep, found before parsing
    (the parser recurses once per level). Every step runs in C: at most about 60 ms for a
    megabyte of nothing but brackets, and a body with fewer brackets than `depth` costs two
    counts."""
    if raw.count(b"[") + raw.count(b"{") <= depth:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if re.search(rb"[\[{]{%d}" % (depth + 1), brackets):  # the usual attack: [[[[[...
        return True
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > depth


# A `\uD800`-`\uDFFF` escape. Escaped pairs (an emoji from an ASCII-only encoder) become one
# character when parsed; a half left alone is no character, and no UTF-8 can carry it on.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
LONE_SURROGATE = "a \\u escape names half of a surrogate pair, which is not a character"


def has_lone_surrogate(raw: bytes, value: Any) -> bool:
    """Whether parsed JSON holds a string with an unpaired surrogate (from a `\\uD800`-style
    escape in `raw`). The scan of `raw` runs in C; the value is walked only when it finds one."""
    if not _SURROGATE_ESCAPE.search(raw):
        return False
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            try:
                v.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            todo += v
            todo += v.values()
        elif isinstance(v, list):
            todo += v
    return False


def parse_json(raw: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Any:
    """A request body parsed as JSON; InvalidInput (400) when it is not JSON, nests deeper
    than `max_depth`, or holds text that is not Unicode."""
    if nests_deeper_than(raw, max_depth):
        raise InvalidInput(f"request body nests arrays and objects deeper than {max_depth} levels")
    try:
        value = json.loads(raw)
    except RecursionError:  # not reached within the bound; kept so a deep body is never a 500
        raise InvalidInput("request body nests arrays and objects too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"request body is not valid JSON: {e}") from None
    if has_lone_surrogate(raw, value):
        raise InvalidInput(f"request body is not valid JSON text: {LONE_SURROGATE}")
    return value


async def read_json_object(
    request: Request, limit: int, max_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> dict[str, Any]:
    """The request body as a JSON object, with size and nesting limits and clear errors."""
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    value = parse_json(body, max_depth)
    if not isinstance(value, dict):
        raise InvalidInput("request body must be a JSON object")
    return value
