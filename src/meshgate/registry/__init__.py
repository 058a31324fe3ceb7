"""Service registry: the Registry protocol and its backends."""

from meshgate.registry.base import InstanceRecord, InstanceState, Registry
from meshgate.registry.embedded import EmbeddedRegistry

__all__ = ["EmbeddedRegistry", "InstanceRecord", "InstanceState", "Registry", "open_registry"]


def open_registry(url: str) -> Registry:
    """The registry backend named by a URL (`embedded` for now)."""
    from meshgate.errors import ConfigError

    if url == "embedded":
        return EmbeddedRegistry()
    raise ConfigError(f"registry backend {url!r} is not available yet; use 'embedded'")
