"""JSON bodies on the wire: the one helper every API module answers JSON with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from meshgate.wire import jsontext

JSON_MEDIA = "application/json"


def dumps(value: Any, *, compact: bool = False) -> str:
    """A value as JSON text. MCP messages are compact, as MCP peers write them, whether they
    go out as a JSON body or as the data of a Server-Sent Event; REST bodies keep
    `json.dumps`' default spacing."""
    if compact:
        return jsontext.dumps(value).decode()
    return json.dumps(value)


def json_response(
    value: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    *,
    media_type: str = JSON_MEDIA,
    compact: bool = False,
) -> Response:
    """A JSON response (RFC 9457 problems pass their own media type)."""
    body = jsontext.dumps(value) if compact else json.dumps(value).encode()
    return Response(body, status_code=status, media_type=media_type, headers=headers)
