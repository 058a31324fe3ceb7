"""The shapes of meshgate.toml's security tables: `[auth]` (who may call: API keys, JWTs from an
OIDC issuer, client certificates), `[roles.NAME]` (what each role may do) and `[[limits]]`
(how often). `SecuritySettings` gathers them; `meshgate.security` puts them to work."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ROLE_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"

MESH_OPERATIONS = (
    "register",
    "deregister",
    "discover",
    "enqueue",
    "tasks.read",
    "tasks.cancel",
    "keys",
    "admin",
)
"""What `mesh:` rules name: registering, heartbeating and deregistering services, reading the
mesh (services, topology, traces), enqueueing tasks, reading and cancelling any caller's tasks,
managing API keys, and the rest (run-time configuration, details only operators see)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A rule: `*`; `mcp:SERVER[/TOOL]`; `http:SERVICE [METHODS [PATH-PREFIX]]`; `mesh:OP[/NAME]`.
# Names and tools are globs (`*`, `?`, `[...]`); METHODS is `*` or `GET,HEAD`.
_RULE = re.compile(
    r"^(?:\*"
    r"|mcp:[^/\s]+(?:/\S+)?"
    r"|http:\S+(?: (?:\*|[A-Za-z]+(?:,[A-Za-z]+)*)(?: /\S*)?)?"
    r"|mesh:[a-z.*]+(?:/\S+)?)$"
)


def _check_rules(value: tuple[str, ...]) -> tuple[str, ...]:
    for rule in value:
        if not _RULE.match(rule):
            raise ValueError(
                f"{rule!r} is not a rule; expected '*', 'mcp:SERVER[/TOOL]', "
                "'http:SERVICE [METHODS [/PATH-PREFIX]]' or 'mesh:OPERATION[/NAME]'"
            )
        if rule.startswith("mesh:"):
            op = rule[5:].split("/", 1)[0]
            if op != "*" and op not in MESH_OPERATIONS:
                raise ValueError(
                    f"{rule!r}: unknown mesh operation {op!r}; expected one of "
                    + ", ".join(MESH_OPERATIONS)
                )
    return value


class RoleSettings(_Model):
    """`[roles.NAME]`: what principals holding this role may do. A call is allowed when an
    `allow` rule of one of the caller's roles matches it and no `deny` rule of any does."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    assert_caller: bool = False
    """Whether principals of this role may name another caller in `X-Meshgate-Caller` (a
    gateway or an agent platform calling on behalf of its users); others are recorded as
    themselves."""

    @field_validator("allow", "deny")
    @classmethod
    def _rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_rules(value)


class JwtSettings(_Model):
    """`[auth.jwt]`: bearer JWTs from an OIDC issuer, checked against its published keys."""

    issuer: str
    audience: str | tuple[str, ...]
    jwks_url: str | None = None
    """Default: the issuer's `jwks_uri` from `ISSUER/.well-known/openid-configuration`."""
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    leeway_s: float = Field(30.0, ge=0, le=600)
    """Clock skew tolerated on `exp`, `nbf` and `iat`."""
    jwks_cache_s: float = Field(300.0, ge=1, le=86400)
    """How long fetched keys are trusted before they are fetched again (a token naming an
    unknown key id fetches them at once, at most every `jwks_min_refresh_s`)."""
    jwks_min_refresh_s: float = Field(10.0, ge=0, le=3600)
    name_claim: str = "sub"
    roles_claim: str = "roles"
    """The claim holding role names: a list or a space-separated string; a dotted path
    (`realm_access.roles`) reaches into nested objects. `scope` works too."""
    role_map: dict[str, str] = Field(default_factory=dict)
    """Claim values mapped to meshgate roles; values not in the map are taken as role names
    as they are."""
    default_roles: tuple[str, ...] = ()
    """Roles every valid token gets besides those of its claims."""

    @field_validator("algorithms")
    @classmethod
    def _no_none(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(a.lower() == "none" or a.startswith("HS") for a in value):
            raise ValueError(
                "list asymmetric algorithms (RS256, ES256, PS256, EdDSA...): 'none' and "
                "shared-secret HS* algorithms are not accepted from an issuer"
            )
        return value


class MtlsSettings(_Model):
    """`[auth.mtls]`: client certificates (verified against `--tls-client-ca`) as identities;
    the principal's name is the certificate's subject common name."""

    roles: tuple[str, ...] = ()
    """Roles every verified certificate gets."""
    subject_roles: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Roles by subject common name, besides `roles`."""


class AuthSettings(_Model):
    """`[auth]`: turns authentication on. Every request then needs a credential, except the
    public paths and what `anonymous_roles` allows."""

    enabled: bool = True
    api_keys: bool = True
    """Accept API keys made with `meshgate keys create` (`Authorization: Bearer mgk_...` or
    `X-API-Key`)."""
    anonymous_roles: tuple[str, ...] = ()
    """Roles of requests with no credential at all; empty: they get 401."""
    public_paths: tuple[str, ...] = ("/livez", "/readyz")
    """Paths anyone may read without a credential (RFC 9728 metadata always is)."""
    resource: str | None = None
    """This gateway's public URL (`https://mesh.example.com`), the resource JWTs are issued
    for; default: built from each request's scheme and Host."""
    authorization_servers: tuple[str, ...] = ()
    """OAuth authorization servers MCP clients get their tokens from (RFC 9728 metadata);
    default: the JWT issuer."""
    scopes_supported: tuple[str, ...] = ()
    jwt: JwtSettings | None = None
    mtls: MtlsSettings | None = None

    @field_validator("anonymous_roles")
    @classmethod
    def _not_admin(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "admin" in value:
            raise ValueError("anonymous requests cannot be admin")
        return value

    @field_validator("public_paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.startswith("/") for p in value):
            raise ValueError("each path starts with '/'")
        return value


class LimitSettings(_Model):
    """`[[limits]]`: a token bucket: `rate_per_s` calls a second on average, `burst` at once.
    `match` picks the calls it counts (a rule, as in roles); `roles` the callers (empty: all);
    `per` whether each principal has its own bucket (`principal`), each target
    (`target`), each principal and target (`principal+target`), or all share one (`all`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: str = "*"
    roles: tuple[str, ...] = ()
    per: Literal["principal", "target", "principal+target", "all"] = "principal"
    rate_per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)

    @field_validator("match")
    @classmethod
    def _match(cls, value: str) -> str:
        _check_rules((value,))
        return value


class SecuritySettings(_Model):
    """Everything meshgate.toml says about who may do what, how often."""

    auth: AuthSettings | None = None
    roles: dict[str, RoleSettings] = Field(default_factory=dict)
    limits: tuple[LimitSettings, ...] = ()

    @property
    def auth_enabled(self) -> bool:
        return self.auth is not None and self.auth.enabled

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, RoleSettings]) -> dict[str, RoleSettings]:
        for name in value:
            if not re.match(ROLE_NAME, name):
                raise ValueError(f"role name {name!r}: 1 to 64 of A-Z a-z 0-9 _ . : -")
        if "admin" in value:
            raise ValueError("'admin' is built in (every right); do not redefine it")
        return value

    @model_validator(mode="after")
    def _limit_names(self) -> SecuritySettings:
        names = [limit.name for limit in self.limits]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"limit names must be unique: {', '.join(dup)}")
        return self
