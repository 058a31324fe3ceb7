"""MCP on the upstream side: framing, stdio connections, protocol eras, supervisor."""
