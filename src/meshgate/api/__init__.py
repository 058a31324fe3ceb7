"""The HTTP surface: mesh REST (/api/v1/mesh/v2), MCP over REST (/api/v1/mcp), MCP Streamable
HTTP and legacy SSE (/mcp, /sse), tasks, metrics and health; RFC 9457 problem details."""
