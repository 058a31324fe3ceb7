"""Service registry: the Registry protocol and its backends."""

from collections.abc import Mapping
from typing import Any

from meshgate.config.consul import CONSUL_REGISTRY_HINT, is_consul_url
from meshgate.config.redis import is_redis_url
from meshgate.crypto import PLAIN, Cipher
from meshgate.registry.base import InstanceRecord, InstanceState, Registry
from meshgate.registry.embedded import EmbeddedRegistry
from meshgate.urls import redact_url

__all__ = ["EmbeddedRegistry", "InstanceRecord", "InstanceState", "Registry", "open_registry"]


def open_registry(
    url: str,
    *,
    node: str,
    lease_s: float = 15.0,
    redis_options: Mapping[str, Any] | None = None,
    cipher: Cipher = PLAIN,
) -> Registry:
    """The registry backend named by a URL: `embedded` or `sqlite:///PATH` (this node only),
    or a Redis URL (`config.redis`: a server or a Sentinel-managed primary, shared by several
    nodes; `redis_options`: the CA bundle of a TLS URL; `cipher` seals secret metadata)."""
    from meshgate.errors import ConfigError

    if url == "embedded" or url.startswith("sqlite:///"):
        return EmbeddedRegistry()  # (the registrations' SQLite file is the store's business)
    if is_redis_url(url):
        from meshgate.registry.redis import RedisRegistry

        return RedisRegistry(url, node=node, lease_s=lease_s, options=redis_options, cipher=cipher)
    if is_consul_url(url):
        raise ConfigError(f"registry backend {redact_url(url)!r}: {CONSUL_REGISTRY_HINT}")
    raise ConfigError(f"registry backend {url!r} is not available; use embedded or redis://")
