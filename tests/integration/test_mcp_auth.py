"""MCP authorization end to end, as the MCP specification defines it for HTTP transports: a real
gateway trusting a real OIDC issuer on loopback (meshgate.testing.oidc), the official Python
and TypeScript SDK clients sending its bearer tokens, the 401 challenge and the RFC 9728
metadata it names, the Python SDK's own OAuth discovery and flows, and sessions bound to the
principal that opened them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import jwt
import pytest
from mcp import Client, MCPError
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from meshgate.testing.oidc import Issuer, Key, running_issuer
from tests.gateway import REPO, Gateway, fault_server, run_gateway
from tests.integration.test_mcp_http import ACCEPT_BOTH, ENVELOPE, _stateless_headers

pytestmark = pytest.mark.timeout(120)

PRM = "/.well-known/oauth-protected-resource"
FORBIDDEN = -32014  # the gateway's JSON-RPC code for a call the caller's roles do not allow


def policy(issuer: Issuer) -> str:
    return f"""
[auth]
[auth.jwt]
issuer = "{issuer.url}"
audience = "{issuer.audience}"
roles_claim = "roles"
role_map = {{ "mcp-reader" = "reader", "mcp-writer" = "writer" }}

[roles.reader]
allow = ["mcp:fault/echo", "mcp:fault/stats", "mcp:hs/ask_sampling"]

[roles.writer]
allow = ["mcp:fault/*"]
deny = ["mcp:fault/crash", "mcp:fault/hang", "mcp:fault/env"]
"""


@dataclass
class Mesh:
    gw: Gateway
    issuer: Issuer

    def reader(self, sub: str = "alice") -> str:
        return self.issuer.mint(sub, ["mcp-reader"])

    def writer(self, sub: str = "bob") -> str:
        return self.issuer.mint(sub, ["mcp-writer"])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_issuer() as issuer:
        tmp = tmp_path_factory.mktemp("mcp_auth")
        servers = {"fault": fault_server(), "hs": fault_server("--era", "handshake")}
        with run_gateway(tmp, servers, policy(issuer)) as gw:
            yield Mesh(gw, issuer)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def texts(result: Any) -> list[str]:
    return [c.text for c in result.content if c.type == "text"]


def http_client(token: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers=bearer(token), timeout=httpx2.Timeout(30, read=60))


def challenge(r: httpx.Response) -> dict[str, str]:
    """The parameters of a 401's `WWW-Authenticate: Bearer ...`."""
    assert r.status_code == 401, r.text
    value = r.headers["www-authenticate"]
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer", value
    params: dict[str, str] = {}
    for part in rest.split('", '):
        name, _, quoted = part.partition("=")
        params[name.strip()] = quoted.strip('"')
    return params


# -- the official SDK clients with a bearer token -------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_python_sdk_sees_and_calls_what_its_role_allows(mesh: Mesh, mode: str) -> None:
    async def main() -> None:
        url = f"{mesh.gw.url}/mcp/fault"
        async with Client(
            streamable_http_client(url, http_client=http_client(mesh.reader())), mode=mode
        ) as c:
            assert {t.name for t in (await c.list_tools()).tools} == {"echo", "stats"}
            assert texts(await c.call_tool("echo", {"text": "hi"})) == ["hi"]
            with pytest.raises(MCPError) as info:
                await c.call_tool("write", {})
            assert info.value.error.code == FORBIDDEN
            assert "write" in info.value.error.message
        async with Client(
            streamable_http_client(f"{mesh.gw.url}/mcp", http_client=http_client(mesh.writer())),
            mode=mode,
        ) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "fault__write" in names and "fault__crash" not in names
            assert not (await c.call_tool("fault__write", {})).is_error

    anyio.run(main)


def test_python_sdk_over_http_sse_with_a_token(mesh: Mesh) -> None:
    async def main() -> None:
        transport = sse_client(f"{mesh.gw.url}/sse/fault", headers=bearer(mesh.reader()))
        async with Client(transport, mode="legacy") as c:
            assert {t.name for t in (await c.list_tools()).tools} == {"echo", "stats"}
            assert texts(await c.call_tool("echo", {"text": "old"})) == ["old"]
            with pytest.raises(MCPError) as info:
                await c.call_tool("write", {})
            assert info.value.error.code == FORBIDDEN

    anyio.run(main)


def _node(url: str, scenario: str, token: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "MESHGATE_TOKEN"}
    if token is not None:
        env["MESHGATE_TOKEN"] = token
    out = subprocess.run(
        ["node", str(REPO / "tests" / "interop" / "ts_client.mjs"), url, scenario],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_typescript_sdk_with_a_token(mesh: Mesh) -> None:
    r = _node(f"{mesh.gw.url}/mcp/fault", "authz", mesh.reader())
    assert r["sessionId"] and r["tools"] == ["echo", "stats"]
    assert r["echo"] == "ts"
    assert r["denied"]["code"] == FORBIDDEN and "write" in r["denied"]["message"]
    # Without one, the SDK is told 401 and, having no OAuth provider, gives up.
    r = _node(f"{mesh.gw.url}/mcp/fault", "unauthenticated", None)
    assert not r["connected"] and "401" in r["error"]


# -- the challenge and the metadata it names ------------------------------------------------------


def test_no_token_is_401_naming_the_resource_metadata(mesh: Mesh) -> None:
    g = mesh.gw
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    for path, resource in (("/mcp", "/mcp"), ("/mcp/fault", "/mcp/fault"), ("/sse", "")):
        if path == "/sse":
            r = g.http.get(path, headers={"accept": "text/event-stream"})
        else:
            r = g.http.post(path, headers={"accept": ACCEPT_BOTH}, json=init)
        params = challenge(r)
        # No credential at all: RFC 6750 says no error code.
        assert "error" not in params, params
        assert params["resource_metadata"] == f"{g.url}{PRM}{resource}"
        doc = httpx.get(params["resource_metadata"]).json()
        assert doc["resource"] == g.url + resource
        assert doc["authorization_servers"] == [mesh.issuer.url]
        assert doc["bearer_methods_supported"] == ["header"]
    # The authorization server the document names publishes its own metadata.
    asm = httpx.get(f"{mesh.issuer.url}/.well-known/oauth-authorization-server").json()
    assert asm["issuer"] == mesh.issuer.url and asm["token_endpoint"]


def test_tokens_that_are_not_good_are_invalid_token(mesh: Mesh) -> None:
    issuer, g = mesh.issuer, mesh.gw
    stranger = Key(issuer.keys[0].kid)  # claims the issuer's key id, is another key
    claims = jwt.decode(issuer.mint("x", []), options={"verify_signature": False})
    bad = {
        "expired": issuer.mint("alice", ["mcp-reader"], exp=claims["iat"] - 120),
        "another audience": issuer.mint("alice", ["mcp-reader"], aud="https://elsewhere"),
        "another key": stranger.sign({**claims, "sub": "alice", "roles": ["mcp-reader"]}),
    }
    words = {"expired": "expired", "another audience": "audience", "another key": "signature"}
    for what, token in bad.items():
        r = g.http.post(
            "/mcp/fault",
            headers={"accept": ACCEPT_BOTH, **bearer(token)},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
        params = challenge(r)
        assert params["error"] == "invalid_token", (what, params)
        assert words[what] in params["error_description"], (what, params)
        assert params["resource_metadata"] == f"{g.url}{PRM}/mcp/fault"
        assert r.json()["status"] == 401  # the body is problem+json too
    r = g.http.post(
        "/mcp/fault",
        headers={"accept": ACCEPT_BOTH, "authorization": "Basic YTpi"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert challenge(r)["error"] == "invalid_request"


# -- the Python SDK's own OAuth ------------------------------------------------------------------


class Storage:
    """Tokens and client registration held in memory (the SDK's TokenStorage)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def test_sdk_client_credentials_flow_from_the_401(mesh: Mesh) -> None:
    """From nothing but the URL and its client credentials, the SDK follows the 401 to our
    metadata, to the issuer's, gets a token for our resource, and calls."""
    issuer = mesh.issuer
    client = issuer.client(["mcp-writer"])
    url = f"{mesh.gw.url}/mcp/fault"
    storage = Storage()
    before = len(issuer.token_requests)

    async def main() -> None:
        provider = ClientCredentialsOAuthProvider(
            url, storage, client.client_id, client.secret or "", issuer=issuer.url
        )
        http = httpx2.AsyncClient(auth=provider, timeout=30)
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
            assert "write" in {t.name for t in (await c.list_tools()).tools}
            assert not (await c.call_tool("write", {})).is_error

    anyio.run(main)
    [form] = issuer.token_requests[before:]
    assert form["grant_type"] == "client_credentials"
    assert form["resource"] == url  # RFC 8707: the token is asked for this MCP endpoint
    assert storage.tokens is not None


def test_sdk_authorization_code_flow_with_pkce(mesh: Mesh) -> None:
    """The flow an interactive MCP client runs: 401, both metadata documents, dynamic client
    registration, the authorization code with PKCE (the test issuer's consent approves at once
    as its user), the token, and the call."""
    issuer = mesh.issuer
    issuer.user, issuer.user_roles = "carol", ["mcp-reader"]
    url = f"{mesh.gw.url}/mcp"
    redirect = "http://127.0.0.1:9/callback"  # never fetched: the redirect is read, not followed
    location: list[str] = []

    async def open_browser(authorization_url: str) -> None:
        async with httpx2.AsyncClient(follow_redirects=False) as h:
            r = await h.get(authorization_url)
        assert r.status_code == 302, r.text
        location.append(r.headers["location"])

    async def callback() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(location[-1]).query)
        return AuthorizationCodeResult(
            code=query["code"][0], state=query["state"][0], iss=query["iss"][0]
        )

    async def main() -> list[str]:
        provider = OAuthClientProvider(
            url,
            OAuthClientMetadata(
                redirect_uris=[redirect],
                token_endpoint_auth_method="none",
                grant_types=["authorization_code"],
                client_name="meshgate-test",
            ),
            Storage(),
            redirect_handler=open_browser,
            callback_handler=callback,
        )
        http = httpx2.AsyncClient(auth=provider, timeout=30)
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
            names = [t.name for t in (await c.list_tools()).tools]
            assert texts(await c.call_tool("fault__echo", {"text": "pkce"})) == ["pkce"]
            return names

    before = len(issuer.token_requests)
    names = anyio.run(main)
    assert sorted(names) == ["fault__echo", "fault__stats", "hs__ask_sampling"]
    [form] = issuer.token_requests[before:]
    assert form["grant_type"] == "authorization_code" and form["code_verifier"]
    assert form["resource"] == url


# -- sessions belong to the principal that opened them --------------------------------------------


def _initialize(g: Gateway, path: str, token: str) -> str:
    r = g.http.post(
        path,
        headers={"accept": ACCEPT_BOTH, **bearer(token)},
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}},
        },
    )
    assert r.status_code == 200, r.text
    session: str = r.headers["mcp-session-id"]
    return session


def test_a_session_is_not_found_by_another_principal(mesh: Mesh) -> None:
    g = mesh.gw
    alice, mallory = mesh.reader("alice"), mesh.writer("mallory")
    sid = _initialize(g, "/mcp/fault", alice)

    def post(token: str) -> httpx.Response:
        return g.http.post(
            "/mcp/fault",
            headers={"accept": ACCEPT_BOTH, "mcp-session-id": sid, **bearer(token)},
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        )

    sse = {"accept": "text/event-stream", "mcp-session-id": sid}
    r = post(mallory)
    assert r.status_code == 404 and "session not found" in r.json()["error"]["message"]
    assert g.get("/mcp/fault", headers={**sse, **bearer(mallory)}).status_code == 404
    resume = {**sse, "last-event-id": "g.1", **bearer(mallory)}
    assert g.get("/mcp/fault", headers=resume).status_code == 404
    delete = g.http.delete("/mcp/fault", headers={"mcp-session-id": sid, **bearer(mallory)})
    assert delete.status_code == 404
    # Same name, same issuer, a new token with other roles: the same principal.
    r = post(mesh.issuer.mint("alice", ["mcp-writer"]))
    assert r.status_code == 200 and "write" in r.text
    r = post(alice)
    assert r.status_code == 200, r.text
    assert (
        g.http.delete("/mcp/fault", headers={"mcp-session-id": sid, **bearer(alice)}).status_code
        == 204
    )


def test_a_legacy_sse_session_is_not_found_by_another_principal(mesh: Mesh) -> None:
    g = mesh.gw
    alice, mallory = mesh.reader("alice"), mesh.writer("mallory")
    message = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    with g.http.stream(
        "GET", "/sse/fault", headers={"accept": "text/event-stream", **bearer(alice)}
    ) as stream:
        assert stream.status_code == 200
        # The line iterator is kept: closing it would close the stream, and so end the session.
        lines = stream.iter_lines()
        endpoint = next(line for line in lines if line.startswith("data: "))[6:]
        assert endpoint.startswith("/messages?session_id=")
        r = g.http.post(endpoint, json=message, headers=bearer(mallory))
        assert r.status_code == 404, r.text
        r = g.http.post(endpoint, json=message, headers=bearer(alice))
        assert r.status_code == 202, r.text


def test_a_parked_call_takes_answers_from_its_principal_only(mesh: Mesh) -> None:
    """A 2026-07-28 call whose server asks the client something is parked under a signed
    requestState; another principal holding that state cannot answer for it."""
    g = mesh.gw
    alice, mallory = mesh.reader("alice"), mesh.reader("mallory")
    envelope = {**ENVELOPE, "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "ask_sampling", "arguments": {}, "_meta": envelope},
    }
    headers = _stateless_headers("tools/call", "ask_sampling")
    first = g.http.post("/mcp/hs", headers={**headers, **bearer(alice)}, json=call)
    assert first.status_code == 200, first.text
    result = first.json()["result"]
    assert result["resultType"] == "input_required"
    [key] = result["inputRequests"]
    retry = json.loads(json.dumps(call))
    retry["params"]["requestState"] = result["requestState"]
    retry["params"]["inputResponses"] = {
        key: {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"}
    }
    r = g.http.post("/mcp/hs", headers={**headers, **bearer(mallory)}, json=retry)
    assert r.status_code == 400 and "requestState is not valid" in r.json()["error"]["message"]
    done = g.http.post("/mcp/hs", headers={**headers, **bearer(alice)}, json=retry)
    assert done.status_code == 200, done.text
    assert '"42"' in done.json()["result"]["content"][0]["text"]


def test_a_clients_token_is_not_passed_to_the_server_behind(tmp_path: Path) -> None:
    """The MCP authorization specification forbids token passthrough. Gateway A serves the
    fault server: echo to anyone, everything to writers. Gateway B serves A as a `url` server,
    everything to writers. A writer's call through B reaches A without the writer's token: A
    sees (and records) an anonymous caller."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_issuer() as issuer:
        jwt_table = f"""
[auth.jwt]
issuer = "{issuer.url}"
audience = "{issuer.audience}"
role_map = {{ "mcp-writer" = "writer" }}
"""
        upstream = f"""
[auth]
anonymous_roles = ["guest"]
{jwt_table}
[roles.guest]
allow = ["mcp:fault/echo"]

[roles.writer]
allow = ["mcp:fault/*"]
"""
        front = f"""
[auth]
{jwt_table}
[roles.writer]
allow = ["mcp:remote/*"]
"""
        with run_gateway(tmp_path / "a", {"fault": fault_server()}, upstream) as a:
            # A writer's token, straight to A: it may write.
            a.http.headers.update(bearer(issuer.mint("bob", ["mcp-writer"])))
            assert a.call("fault", "write").status_code == 200
            remote = {"remote": {"type": "http", "url": f"{a.url}/mcp/fault"}}
            with run_gateway(tmp_path / "b", remote, front) as b:
                b.http.headers.update(bearer(issuer.mint("bob", ["mcp-writer"])))
                r = b.call("remote", "echo", {"text": "through"})
                assert r.status_code == 200, r.text
                # B knows A's tools as A shows them to B: an anonymous caller's.
                assert b.call("remote", "write").status_code == 404
            admin = bearer(issuer.mint("root", ["admin"]))
            edges = a.get("/api/v1/mesh/v2/topology", headers=admin).json()["edges"]
            # Bob called A once himself; the call through B came as nobody's.
            calls = {e["from"]: e["calls"] for e in edges if e["to"] == "fault"}
            assert calls == {"bob": 1, "anonymous": 1}, edges
