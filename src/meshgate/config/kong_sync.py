"""The shape of meshgate.toml's `[kong]` table: keeping a running Kong's upstreams, targets
and active health checks in step with meshgate's HTTP services, through Kong's Admin API
(`services/kong_sync.py`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TOKEN_ENV = "MESHGATE_KONG_ADMIN_TOKEN"
"""The environment variable an Admin API token is better kept in than the policy file."""


class KongSyncSettings(BaseModel):
    """`[kong]`: which Kong Admin API to keep in step, how often, with what credential."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    admin_url: str | None = None
    """Kong's Admin API (`http://kong:8001`); None: no sync. `serve --kong-admin URL` sets it."""
    sync_interval_s: float = Field(30.0, ge=0.5, le=86400)
    """A full pass this often, besides the ones registry changes wake: it puts back what was
    changed by hand in Kong."""
    admin_token: str | None = Field(None, repr=False)
    """Sent in `admin_token_header` (Kong Enterprise's RBAC); better kept in the environment,
    MESHGATE_KONG_ADMIN_TOKEN."""
    admin_token_header: str = "Kong-Admin-Token"
    upstream_prefix: str = "meshgate-"
    """Service NAME is kept as the Kong upstream `<prefix>NAME`."""
    timeout_s: float = Field(5.0, gt=0, le=120)
    """Each Admin API request."""
    retry_cap_s: float = Field(30.0, ge=0.1, le=3600)
    """After a failed pass, the next comes after a backoff growing to this."""

    @field_validator("admin_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected the Admin API's http(s) URL, e.g. http://127.0.0.1:8001")
        return value.rstrip("/")

    @field_validator("admin_token_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
            raise ValueError("expected a header name (letters, digits, '-')")
        return value

    @field_validator("upstream_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", value):
            raise ValueError("expected up to 64 of A-Z a-z 0-9 _ . -")
        return value

    @property
    def enabled(self) -> bool:
        return self.admin_url is not None

    def with_admin_url(self, url: str) -> KongSyncSettings:
        """These settings syncing `url` (`serve --kong-admin`); ValueError for a bad URL."""
        try:
            return KongSyncSettings(**{**self.model_dump(), "admin_url": url})
        except ValidationError as e:
            raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None

    def with_environment(self, environ: Mapping[str, str]) -> KongSyncSettings:
        """These settings with the token of the environment, if it has one."""
        token = environ.get(TOKEN_ENV)
        return self.model_copy(update={"admin_token": token}) if token else self
