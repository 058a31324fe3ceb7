"""Sessions that live on another node: their requests relayed to it as they are.

A handshake-era session (and an HTTP+SSE one) lives in the memory of the node that opened it;
its id begins with that node's tag (`meshgate.router.cluster.session_tag`). A request that
reaches another node with such an id (a POST, a GET stream with or without `Last-Event-ID`, a
DELETE, a legacy `/messages` post) is sent on to the owner's same endpoint at its
`advertise_url`: the body and the client's headers as they came (but hop-by-hop headers and the
client's own credentials), under this node's signature asserting the caller, so the owner
checks the session's principal binding against the original caller; the owner's answer is
streamed back as it comes (event streams included). Everything of the session (its streams,
the server's questions to the client, input_required rounds, sticky pins) so stays with the
owner. An id whose node is not in the membership (gone, or never was) is not found (404), so
the client initializes again; an owner that does not accept a connection is 503 until its
record expires. The relaying itself is `meshgate.api.node_relay`'s.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response

from meshgate.api.mcp_http.checks import Reject
from meshgate.api.node_relay import NodeRelay, Relayed
from meshgate.errors import InvalidArguments, MeshgateError, Unavailable, UpstreamTimeout
from meshgate.wire.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST

__all__ = ["NOT_FOUND", "Relayed", "SessionRelay"]

NOT_FOUND = "session not found or ended; initialize again"


class SessionRelay(NodeRelay):
    """Finds a session's owner node and relays a request to it, streaming the answer back;
    refusals are JSON-RPC errors, as the MCP transports answer."""

    unreachable = (
        "the node that holds this session cannot be reached; retry, or initialize "
        "again once it has left the cluster"
    )

    def owner(self, request: Request, session_id: str) -> str | None:
        """The URL of the node that holds `session_id`, if not this one; Reject 404 when the
        id names no live node, or when a peer sent it here although it is not this node's (a
        relayed request is never relayed again)."""
        if self.cluster.owns(session_id):
            return None
        record = None if self.relayed(request) else self.cluster.owner_of(session_id)
        if record is None or not record.address:
            raise Reject(404, INVALID_REQUEST, NOT_FOUND)
        return record.address

    def refuse(self, request: Request, err: MeshgateError) -> Response:
        # A bad transport header is a bad request, as /mcp itself says.
        status = 400 if isinstance(err, InvalidArguments) else err.status
        code = (
            INTERNAL_ERROR if isinstance(err, (UpstreamTimeout, Unavailable)) else INVALID_REQUEST
        )
        retry = err.retry_after
        headers = {"Retry-After": str(max(1, math.ceil(retry)))} if retry is not None else None
        return Reject(status, code, err.detail).response(headers)
