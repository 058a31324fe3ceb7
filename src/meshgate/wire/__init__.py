"""What both directions of MCP share: JSON-RPC framing, the protocol eras and the client side
of discovery and probes, and the Connection protocol every upstream connection implements."""
