"""The MCP servers the gateway calls: processes in their groups and the reaper, stdio and HTTP
connections, verified instances, and the supervisor's pools that start, probe and restart them."""
