"""The HTTP surface: mesh REST, MCP REST, problem details."""
