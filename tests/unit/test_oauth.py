"""The RFC 9728 metadata document, its well-known path, and the 401 challenge pointing to it."""

from __future__ import annotations

import pytest

from meshgate.security.jwt import claim_at, roles_from
from meshgate.security.oauth import (
    metadata_path,
    metadata_url,
    protected_resource_metadata,
    www_authenticate,
)


def test_metadata_document_has_the_rfc_9728_fields() -> None:
    doc = protected_resource_metadata(
        "https://mesh.example.com/mcp", ["https://id.example.com/realms/mesh"], ["mcp:tools"]
    )
    assert doc == {
        "resource": "https://mesh.example.com/mcp",
        "authorization_servers": ["https://id.example.com/realms/mesh"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools"],
        "resource_name": "meshgate",
    }
    assert "scopes_supported" not in protected_resource_metadata("https://m", ["https://a"], [])


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "/.well-known/oauth-protected-resource"),
        ("/", "/.well-known/oauth-protected-resource"),
        ("/mcp", "/.well-known/oauth-protected-resource/mcp"),
        ("/public/mcp", "/.well-known/oauth-protected-resource/public/mcp"),
        ("/mcp/time", "/.well-known/oauth-protected-resource/mcp/time"),
        ("mcp", "/.well-known/oauth-protected-resource/mcp"),
    ],
)
def test_metadata_path_inserts_the_well_known_prefix_before_the_path(
    path: str, expected: str
) -> None:
    assert metadata_path(path) == expected


def test_metadata_url_of_a_resource_url() -> None:
    assert (
        metadata_url("https://mesh.example.com:8443/mcp")
        == "https://mesh.example.com:8443/.well-known/oauth-protected-resource/mcp"
    )
    assert (
        metadata_url("https://mesh.example.com")
        == "https://mesh.example.com/.well-known/oauth-protected-resource"
    )


URL = "https://mesh.example.com/.well-known/oauth-protected-resource/mcp"


def test_challenge_names_the_metadata_and_the_error() -> None:
    assert www_authenticate(URL) == f'Bearer resource_metadata="{URL}"'
    assert www_authenticate(
        URL, error="invalid_token", description="the token has expired", scope="mcp:read"
    ) == (
        f'Bearer resource_metadata="{URL}", error="invalid_token", '
        'error_description="the token has expired", scope="mcp:read"'
    )
    assert www_authenticate(URL, scope=" a  b ").endswith('scope="a b"')


def test_challenge_values_cannot_break_out_of_their_quotes() -> None:
    value = www_authenticate(
        'https://m/x"y\\z', error="invalid_token", description='bad "alg" \\ é\r\nX-Evil: 1'
    )
    assert value.startswith('Bearer resource_metadata="https://m/x\\"y\\\\z", ')
    assert value.endswith("error_description=\"bad 'alg' / ???X-Evil: 1\"")
    assert "\r" not in value and "\n" not in value
    long = www_authenticate(URL, description="x" * 1000)
    assert len(long) < len(URL) + 400
    with pytest.raises(ValueError, match="error code"):
        www_authenticate(URL, error='invalid"token')
    with pytest.raises(ValueError, match="scope tokens"):
        www_authenticate(URL, scope='a"b')
    with pytest.raises(ValueError, match="scope tokens"):
        www_authenticate(URL, scope="  ")


def test_claims_are_found_by_exact_name_then_dotted_path() -> None:
    claims = {
        "https://example.com/roles": ["a"],
        "realm_access": {"roles": ["b"]},
        "resource_access": {"mesh": {"roles": ["c"]}},
        "scope": "d e",
    }
    assert claim_at(claims, "https://example.com/roles") == ["a"]
    assert claim_at(claims, "realm_access.roles") == ["b"]
    assert claim_at(claims, "resource_access.mesh.roles") == ["c"]
    assert claim_at(claims, "realm_access.missing") is None
    assert claim_at(claims, "scope.x") is None


def test_roles_from_lists_and_strings_through_the_map() -> None:
    assert roles_from(["a", "b", 3, ""], {"a": "admin"}) == {"admin", "b"}
    assert roles_from("read  write", {}) == {"read", "write"}
    assert roles_from({"a": 1}, {}) == set()
    assert roles_from(None, {}) == set()
