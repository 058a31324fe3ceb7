"""MCP Streamable HTTP: `/mcp` (every server) and `/mcp/{name}` (one server), both eras.

- Handshake era (2024-11-05 .. 2025-11-25): `initialize` opens a session (`Mcp-Session-Id`);
  POST carries requests, notifications and responses (batches in 2025-03-26); GET opens the
  session's standing stream; DELETE ends the session; streams resume with `Last-Event-ID`.
- Stateless era (2026-07-28): one request per POST with the protocol envelope in
  `params._meta`, checked against the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`
  headers; results carry `resultType` and, for lists, cache hints; `subscriptions/listen`
  streams notifications.

A request is answered with JSON, or with Server-Sent Events when the client accepts them and
asked for progress (or accepts nothing else). Requests with an Origin header are refused
unless the origin is loopback or configured (DNS rebinding).

The modules, by concern:

- `transport`: the ASGI app (`McpHttp`): checks, dispatch to an era, notification fan-out;
- `checks`: Origin, Accept, Content-Type, size and JSON-RPC shape; `Reject`;
- `handshake`: sessions: initialize, POST (with batches), GET streams and resumption, DELETE;
- `stateless`: the `_meta` envelope and its headers, `input_required` rounds,
  `subscriptions/listen`;
- `streaming`: the JSON or SSE answer to one request, event streams as SSE text;
- `legacy_sse`: the HTTP+SSE transport of 2024-11-05 (`/sse`, `/messages`).
"""

from meshgate.api.mcp_http.transport import McpHttp

__all__ = ["McpHttp"]
