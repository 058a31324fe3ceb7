"""OAuth 2.1 protected resource pieces (RFC 9728, RFC 6750) for MCP's HTTP authorization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_path(resource_path: str) -> str:
    """Where the metadata of a resource at `resource_path` is published: the well-known
    prefix, then the resource's path (RFC 9728 section 3.1)."""
    path = resource_path.rstrip("/")
    return WELL_KNOWN + path


def protected_resource_metadata(
    resource: str, authorization_servers: Sequence[str], scopes: Sequence[str] = ()
) -> dict[str, Any]:
    """The RFC 9728 metadata document of `resource`."""
    out: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "bearer_methods_supported": ["header"],
        "resource_name": "meshgate",
    }
    if scopes:
        out["scopes_supported"] = list(scopes)
    return out


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(
    metadata_url: str,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    """A `WWW-Authenticate: Bearer ...` value naming the resource's metadata."""
    params = [f"resource_metadata={_quote(metadata_url)}"]
    if error:
        params.append(f"error={_quote(error)}")
    if description:
        params.append(f"error_description={_quote(description)}")
    if scope:
        params.append(f"scope={_quote(scope)}")
    return "Bearer " + ", ".join(params)
