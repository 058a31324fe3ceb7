"""Test aids that ship with meshgate: an MCP server that misbehaves on request."""
