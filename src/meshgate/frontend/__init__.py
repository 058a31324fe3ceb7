"""The MCP server the gateway's clients talk to: catalogs, sessions, era bridging, MCP tasks."""
