"""HTTP upstreams: remote MCP servers (and, later, services and peer nodes)."""
