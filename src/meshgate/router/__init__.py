"""The one call path: interceptors, then resolve -> healthy -> breaker -> balancer -> Attempt
-> outcome -> retry, for MCP instances and HTTP services alike."""

from meshgate.router.core import Router
from meshgate.router.picking import IDEMPOTENT_METHODS, Pin, hash_key, tool_is_retry_safe

__all__ = ["IDEMPOTENT_METHODS", "Pin", "Router", "hash_key", "tool_is_retry_safe"]
