"""The shape of meshgate.toml's `[consul]` table: the Consul-compatible HTTP API
(`api/consul.py`) that lets Consul's clients and Prometheus' `consul_sd_configs` register and
discover services in meshgate's own registry."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

CONSUL_MAX_WAIT_S = 600.0
"""Consul's own cap on a blocking query's `wait` (10 minutes)."""

CONSUL_REGISTRY_HINT = (
    "meshgate does not keep its registry in Consul; it serves a Consul-compatible HTTP API "
    "itself: point CONSUL_HTTP_ADDR (or Prometheus' consul_sd_configs server) at meshgate's "
    "address, or at the [consul] port when one is set (docs/api.md, 'Consul-compatible API')"
)
"""What a `consul://` registry URL is answered with."""


def is_consul_url(value: str) -> bool:
    return value.lower().startswith("consul:")


class ConsulSettings(BaseModel):
    """`[consul]`: the Consul-compatible API, served under `/v1/` on the main port and, when
    `port` is set, on a listener of its own that serves nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Serve `/v1/...` at all (on the main port and `port`)."""
    port: int | None = Field(None, ge=0, le=65535)
    """A second listener, on `mesh.host`, serving only `/v1/...` (8500 is Consul's own);
    None: none. 0: a port the OS chooses (logged)."""
    datacenter: str = "dc1"
    """The datacenter name the API reports (`/v1/agent/self`); a query for another one gets
    Consul's "No path to datacenter"."""
    max_wait_s: float = Field(300.0, gt=0, le=CONSUL_MAX_WAIT_S)
    """The longest a blocking query (`?index=N&wait=...`) is held; a longer `wait` is cut to
    it. A query without `wait` is held this long too (Consul's default is 5 minutes)."""
    max_blocking_queries: int = Field(1024, ge=1, le=1_000_000)
    """Blocking queries held at once on this node; one more is answered 429 at once."""
    max_blocking_queries_per_principal: int = Field(256, ge=1, le=1_000_000)
    """Blocking queries one principal may hold at once (more: 429). Without `[auth]` every
    request is the same principal, so this bounds them all."""

    @field_validator("datacenter")
    @classmethod
    def _datacenter(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError("must be 1 to 64 letters, digits, '_' or '-'")
        return value
