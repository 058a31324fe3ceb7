"""meshgate: a service mesh for MCP servers and the HTTP services around them."""

__version__ = "0.1.0"

__all__ = ["__version__"]
