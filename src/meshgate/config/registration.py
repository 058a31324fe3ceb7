"""What HTTP service instances register, and how they are checked: the registration body
(`POST /api/v1/mesh/v2/register`, `[[mesh.services]]`), its health check, and the
interceptors of `[mesh] interceptors`."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshgate.config.policy import FrozenModel


class HeadersInterceptor(FrozenModel):
    type: Literal["headers"]
    set: dict[str, str]


class CallerInterceptor(FrozenModel):
    type: Literal["caller"]
    header: str = "X-Meshgate-Caller"
    required: bool = False


class TraceInterceptor(FrozenModel):
    type: Literal["trace"]


class SizeLimitInterceptor(FrozenModel):
    type: Literal["size_limit"]
    max_request_bytes: int = Field(ge=1)


InterceptorSpec = Annotated[
    HeadersInterceptor | CallerInterceptor | TraceInterceptor | SizeLimitInterceptor,
    Field(discriminator="type"),
]


SERVICE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["http", "tcp", "mcp", "ttl"] = "http"
    path: str = "/health"
    """http: the path to GET; mcp: the MCP endpoint's path (e.g. /mcp)."""
    interval_s: float = Field(5.0, ge=0.05, le=3600)
    """How often the check runs; ttl (no check is run: the instance reports its own health,
    as a heartbeat or a Consul TTL update): how long a report holds before it fails."""
    timeout_s: float = Field(2.0, gt=0, le=60)
    unhealthy_after: int = Field(3, ge=1, le=100)
    healthy_after: int = Field(1, ge=1, le=100)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class Registration(BaseModel):
    """What a service instance registers (`POST /api/v1/mesh/v2/register`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SERVICE_NAME)
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    url: str | None = None
    address: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tags: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict[str, Any] = Field(default_factory=dict)
    weight: int = Field(1, ge=1, le=1000)
    check: Check = Field(default_factory=Check)
    ttl_s: float | None = Field(None, gt=0, le=86400)
    depends_on: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        if any(not t or len(t) > 64 for t in value):
            raise ValueError("each tag is 1 to 64 characters")
        return value

    @model_validator(mode="after")
    def _where(self) -> Registration:
        if self.url is not None:
            if self.address is not None or self.port is not None:
                raise ValueError("give either url, or address and port, not both")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be an http:// or https:// URL with a host")
        elif self.address is None or self.port is None:
            raise ValueError("give url, or address and port")
        return self

    @property
    def base_url(self) -> str:
        if self.url is not None:
            return self.url.rstrip("/")
        host = f"[{self.address}]" if self.address and ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    @property
    def instance_id(self) -> str:
        """The id the client gave, or one derived from name and URL: registering the same
        service at the same URL again is idempotent."""
        if self.id is not None:
            return self.id
        return f"{self.name}-{hashlib.sha1(self.base_url.encode()).hexdigest()[:6]}"
