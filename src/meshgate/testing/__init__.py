"""Test aids that ship with meshgate: an MCP server that misbehaves on request, the fixtures of
the MCP conformance suite, a real gateway and redis-server started on OS-chosen ports."""
