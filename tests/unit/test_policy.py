"""Roles and rules: what each principal may do, decided by the policy alone."""

from __future__ import annotations

import asyncio

import pytest

from meshgate.config import AuthSettings, RoleSettings, SecuritySettings
from meshgate.errors import Forbidden, Unauthenticated
from meshgate.security import LOCAL, NOBODY, Principal
from meshgate.security.authn import Authenticator
from meshgate.security.client_cert import ClientCert
from meshgate.security.gate import Gate
from meshgate.security.policy import Action, Policy, Rule

ROLES = {
    "agent": RoleSettings(
        allow=(
            "mcp:time",
            "mcp:filesystem/read_*",
            "http:orders GET,HEAD /api",
            "mesh:enqueue",
        ),
        deny=("mcp:filesystem/read_secret*",),
    ),
    "ops": RoleSettings(allow=("mesh:*", "http:*"), deny=("mesh:keys",)),
    "platform": RoleSettings(allow=("mcp:*",), assert_caller=True),
    "locked": RoleSettings(deny=("*",)),
}


def who(*roles: str, service: str | None = None) -> Principal:
    return Principal("p", frozenset(roles), service=service)


@pytest.fixture
def policy() -> Policy:
    return Policy(ROLES)


def test_server_rule_covers_every_method_and_tool(policy: Policy) -> None:
    agent = who("agent")
    assert policy.allows(agent, Action.tool("time", "get_current_time"))
    assert policy.allows(agent, Action.server("time"))
    assert not policy.allows(agent, Action.tool("timer", "x"))  # a name, not a prefix


def test_tool_rule_covers_those_tools_only(policy: Policy) -> None:
    agent = who("agent")
    assert policy.allows(agent, Action.tool("filesystem", "read_file"))
    assert not policy.allows(agent, Action.tool("filesystem", "write_file"))
    # Prompts and resources of a server need a rule for the whole server.
    assert not policy.allows(agent, Action.server("filesystem"))


def test_deny_wins_over_allow(policy: Policy) -> None:
    assert not policy.allows(who("agent"), Action.tool("filesystem", "read_secret_file"))
    # ... across roles too: one role's deny beats another's allow.
    assert not policy.allows(who("agent", "locked"), Action.tool("time", "get_current_time"))
    assert not policy.allows(who("admin", "locked"), Action.mesh("admin"))


def test_http_rule_by_method_and_path_segments(policy: Policy) -> None:
    agent = who("agent")
    assert policy.allows(agent, Action.http("orders", "get", "/api"))
    assert policy.allows(agent, Action.http("orders", "HEAD", "/api/orders/1"))
    assert not policy.allows(agent, Action.http("orders", "POST", "/api/orders"))
    assert not policy.allows(agent, Action.http("orders", "GET", "/apix"))
    assert not policy.allows(agent, Action.http("orders", "GET", "/"))
    assert not policy.allows(agent, Action.http("billing", "GET", "/api"))


def test_mesh_operations(policy: Policy) -> None:
    assert policy.allows(who("agent"), Action.mesh("enqueue"))
    assert not policy.allows(who("agent"), Action.mesh("register", "orders"))
    ops = who("ops")
    assert policy.allows(ops, Action.mesh("register", "orders"))
    assert policy.allows(ops, Action.mesh("tasks.cancel"))
    assert not policy.allows(ops, Action.mesh("keys"))
    assert not policy.allows(ops, Action.tool("time", "x"))


def test_admin_is_built_in(policy: Policy) -> None:
    admin = who("admin")
    for action in (
        Action.tool("filesystem", "write_file"),
        Action.http("orders", "DELETE", "/x"),
        Action.mesh("keys"),
    ):
        assert policy.allows(admin, action)


def test_nobody_and_unknown_roles_may_do_nothing(policy: Policy) -> None:
    assert not policy.allows(NOBODY, Action.tool("time", "get_current_time"))
    assert not policy.allows(who("no-such-role"), Action.server("time"))
    assert policy.undefined(["agent", "no-such-role", "admin"]) == ["no-such-role"]


def test_a_service_credential_registers_its_own_name_only(policy: Policy) -> None:
    svc = who("admin", service="orders")  # its roles do not widen it
    assert policy.allows(svc, Action.mesh("register", "orders"))
    assert policy.allows(svc, Action.mesh("deregister", "orders"))
    assert not policy.allows(svc, Action.mesh("register", "billing"))
    assert not policy.allows(svc, Action.mesh("enqueue"))
    assert not policy.allows(svc, Action.tool("time", "x"))


def test_forbidden_names_the_principal_and_the_action(policy: Policy) -> None:
    with pytest.raises(Forbidden) as e:
        policy.check(who("agent"), Action.tool("filesystem", "write_file"))
    assert e.value.status == 403
    assert "write_file" in e.value.detail and "filesystem" in e.value.detail


def test_without_auth_everything_is_allowed() -> None:
    off = Policy(ROLES, enabled=False)
    assert off.allows(NOBODY, Action.mesh("keys"))
    assert off.may_assert_caller(NOBODY)


def test_who_may_assert_a_caller(policy: Policy) -> None:
    gate = Gate(policy)
    assert gate.caller(who("platform"), "alice") == "alice"
    assert gate.caller(who("agent"), "alice") == "p"  # recorded as itself
    assert gate.caller(who("agent"), None) == "p"
    assert gate.caller(who("platform", service="x"), "alice") == "p"
    assert Gate().caller(LOCAL, "alice") == "alice"  # no auth: as before


def test_gate_refuses_with_403() -> None:
    gate = Gate(Policy(ROLES))
    asyncio.run(gate.admit(who("agent"), Action.server("time")))
    with pytest.raises(Forbidden):
        asyncio.run(gate.admit(who("agent"), Action.mesh("keys")))


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("*", Rule("*")),
        ("mcp:fs", Rule("mcp", "fs")),
        ("mcp:fs/read_*", Rule("mcp", "fs", "read_*")),
        ("http:orders", Rule("http", "orders")),
        ("http:orders * /api/", Rule("http", "orders", prefix="/api")),
        ("http:o GET,post", Rule("http", "o", methods=frozenset({"GET", "POST"}))),
        ("mesh:register/orders-*", Rule("mesh", "register", "orders-*")),
    ],
)
def test_rules_parse(text: str, rule: Rule) -> None:
    assert Rule.parse(text) == rule


@pytest.mark.parametrize(
    "bad", ["mcp:", "http:orders GET api", "mesh:bogus", "tools:x", "mcp:a b", ""]
)
def test_bad_rules_are_refused_at_load(bad: str) -> None:
    with pytest.raises(ValueError, match=r"rule|mesh operation"):
        RoleSettings(allow=(bad,))


def test_admin_cannot_be_redefined_or_given_to_anonymous() -> None:
    with pytest.raises(ValueError, match="built in"):
        SecuritySettings(roles={"admin": RoleSettings()})
    with pytest.raises(ValueError, match="anonymous"):
        AuthSettings(anonymous_roles=("admin",))


def authenticate(auth: Authenticator, **headers: str) -> Principal:
    return asyncio.run(auth.authenticate(headers))


def test_authentication_off_runs_as_local() -> None:
    assert authenticate(Authenticator(None)) is LOCAL
    assert authenticate(Authenticator(AuthSettings(enabled=False))) is LOCAL


def test_no_credential_is_401_unless_anonymous_roles() -> None:
    with pytest.raises(Unauthenticated):
        authenticate(Authenticator(AuthSettings()))
    guest = authenticate(Authenticator(AuthSettings(anonymous_roles=("guest",))))
    assert guest.roles == {"guest"} and guest.via == "anonymous"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer"},
        {"authorization": "Bearer mgk_x_y"},  # a key, and no key store
        {"authorization": "Bearer eyJhbGciOi.x.y"},  # a JWT, and no issuer configured
        {"x-api-key": "not-a-key"},
    ],
)
def test_a_wrong_credential_is_never_taken_as_none(headers: dict[str, str]) -> None:
    # Even with anonymous roles: a credential that fails does not fall back to anonymous.
    auth = Authenticator(AuthSettings(anonymous_roles=("guest",), api_keys=False))
    with pytest.raises(Unauthenticated):
        authenticate(auth, **headers)


def cert(cn: str) -> ClientCert:
    return ClientCert(f"CN={cn}", cn, (), "00")


def test_client_certificates_map_to_roles() -> None:
    settings = AuthSettings.model_validate(
        {"mtls": {"roles": ["agent"], "subject_roles": {"ci-runner": ["ops"]}}}
    )
    auth = Authenticator(settings)
    p = asyncio.run(auth.authenticate({}, cert("ci-runner")))
    assert p.name == "ci-runner" and p.roles == {"agent", "ops"} and p.via == "mtls"
    # Without [auth.mtls] a certificate is no identity: no credential at all.
    with pytest.raises(Unauthenticated):
        asyncio.run(Authenticator(AuthSettings()).authenticate({}, cert("x")))
