"""What the gateway tells OAuth clients about itself as a protected resource: the RFC 9728
metadata document, where it is served, and the RFC 6750 `WWW-Authenticate` challenge that
points MCP clients to it on a 401."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

WELL_KNOWN = "/.well-known/oauth-protected-resource"

# RFC 6750 section 3: error and error_description take %x20-21 / %x23-5B / %x5D-7E only (no
# quote, no backslash, nothing outside printable ASCII); scope tokens the same less the space.
_ERROR = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]+$")
_NOT_DESCRIPTION = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
_DESCRIPTION_MAX = 300


def protected_resource_metadata(
    resource: str, authorization_servers: Sequence[str], scopes: Sequence[str]
) -> dict[str, Any]:
    """The RFC 9728 protected resource metadata document for `resource` (the gateway's, or
    one MCP endpoint's, URL): where tokens for it come from and how they are sent."""
    doc: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "bearer_methods_supported": ["header"],
        "resource_name": "meshgate",
    }
    if scopes:
        doc["scopes_supported"] = list(scopes)
    return doc


def metadata_path(resource_path: str) -> str:
    """Where the metadata of a resource with this URL path is served (RFC 9728 section 3.1,
    as the MCP authorization specification applies it): the well-known prefix inserted before
    the path, so `/mcp` has `/.well-known/oauth-protected-resource/mcp` and the root (empty or
    `/`) the bare prefix."""
    if resource_path in ("", "/"):
        return WELL_KNOWN
    if not resource_path.startswith("/"):
        resource_path = "/" + resource_path
    return WELL_KNOWN + resource_path


def metadata_url(resource: str) -> str:
    """The metadata URL of a resource URL: `https://mesh.example.com/mcp` ->
    `https://mesh.example.com/.well-known/oauth-protected-resource/mcp`."""
    parts = urlsplit(resource)
    return urlunsplit((parts.scheme, parts.netloc, metadata_path(parts.path), parts.query, ""))


def _quoted(value: str) -> str:
    # RFC 9110 section 5.6.4 quoted-string: quote and backslash escaped; control characters
    # (a header splitting attempt) cannot be carried at all, so they go.
    value = re.sub(r"[\x00-\x1f\x7f]", "", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(
    metadata_url: str,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    """The `WWW-Authenticate` value of a 401 (or a 403 `insufficient_scope`): the Bearer
    scheme, the RFC 9728 `resource_metadata` URL, and the RFC 6750 error, description and
    scope when given. Characters RFC 6750 does not allow in a description are replaced."""
    params = [f"resource_metadata={_quoted(metadata_url)}"]
    if error is not None:
        if not _ERROR.match(error):
            raise ValueError(f"{error!r} is not an RFC 6750 error code")
        params.append(f'error="{error}"')
    if description:
        text = _NOT_DESCRIPTION.sub("?", description.replace('"', "'").replace("\\", "/"))
        params.append(f'error_description="{text[:_DESCRIPTION_MAX]}"')
    if scope is not None:
        tokens = scope.split()
        if not tokens or not all(_SCOPE_TOKEN.match(t) for t in tokens):
            raise ValueError(f"{scope!r} is not a space-separated list of scope tokens")
        params.append(f'scope="{" ".join(tokens)}"')
    return "Bearer " + ", ".join(params)
