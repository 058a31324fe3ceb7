"""Roles and rules: what a principal may do.

A rule names what it covers: `*` (everything); `mcp:SERVER` (every method of an MCP server:
its tools, prompts, resources); `mcp:SERVER/TOOL` (only those tools); `http:SERVICE [METHODS
[/PATH-PREFIX]]` (requests to an HTTP service); `mesh:OPERATION[/NAME]` (the mesh's own
operations; NAME the service registered or deregistered). Names and tools are globs.

A principal may do something when an `allow` rule of one of its roles covers it and no `deny`
rule of any of its roles does. `admin` is built in and may do everything not denied to it.
A service credential (an API key made for one service) may register, heartbeat and deregister
that service and nothing else, whatever its roles say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from meshgate.config import RoleSettings
from meshgate.errors import Forbidden
from meshgate.security.principal import Principal


@dataclass(frozen=True)
class Action:
    """One thing a principal asks to do, as rules see it."""

    kind: str  # "mcp", "http" or "mesh"
    name: str  # the server, the service, or the mesh operation
    item: str | None = None  # mcp: the tool (None: a server-wide method); mesh: the service
    method: str | None = None  # http: the request method
    path: str | None = None  # http: the request path

    @classmethod
    def tool(cls, server: str, tool: str) -> Action:
        return cls("mcp", server, tool)

    @classmethod
    def server(cls, server: str) -> Action:
        """A method of an MCP server that is not one tool (prompts, resources, completion)."""
        return cls("mcp", server)

    @classmethod
    def http(cls, service: str, method: str, path: str) -> Action:
        return cls("http", service, method=method.upper(), path=path)

    @classmethod
    def mesh(cls, operation: str, service: str | None = None) -> Action:
        return cls("mesh", operation, service)

    def target(self) -> str:
        """What a per-target rate limit counts by: the server's tool, the service, the
        operation."""
        if self.kind == "mcp":
            return f"mcp:{self.name}/{self.item}" if self.item else f"mcp:{self.name}"
        return f"{self.kind}:{self.name}"

    def describe(self) -> str:
        if self.kind == "mcp":
            return f"tool {self.item} of {self.name}" if self.item else f"MCP server {self.name}"
        if self.kind == "http":
            return f"{self.method} {self.path} on {self.name}"
        return f"mesh operation {self.name}" + (f" for {self.item}" if self.item else "")


@dataclass(frozen=True)
class Rule:
    """One parsed rule (see the module's docstring for the forms)."""

    kind: str  # "*", "mcp", "http", "mesh"
    name: str = "*"
    item: str | None = None
    methods: frozenset[str] | None = None  # None: any
    prefix: str | None = None

    @classmethod
    def parse(cls, text: str) -> Rule:
        if text == "*":
            return cls("*")
        kind, _, rest = text.partition(":")
        if kind == "mcp":
            name, _, tool = rest.partition("/")
            return cls("mcp", name, tool or None)
        if kind == "mesh":
            name, _, service = rest.partition("/")
            return cls("mesh", name, service or None)
        service, *more = rest.split(" ")
        methods = None
        if more and more[0] != "*":
            methods = frozenset(m.upper() for m in more[0].split(","))
        prefix = more[1].rstrip("/") if len(more) > 1 else None
        return cls("http", service, methods=methods, prefix=prefix or None)

    def covers(self, action: Action) -> bool:
        if self.kind == "*":
            return True
        if self.kind != action.kind or not fnmatchcase(action.name, self.name):
            return False
        if self.kind == "mcp":
            # A tool rule covers those tools only; a server rule covers all of the server.
            return self.item is None or (
                action.item is not None and fnmatchcase(action.item, self.item)
            )
        if self.kind == "mesh":
            return self.item is None or (
                action.item is not None and fnmatchcase(action.item, self.item)
            )
        if self.methods is not None and action.method not in self.methods:
            return False
        if self.prefix is None:
            return True
        path = action.path or "/"
        # By whole segments: /api covers /api and /api/x, not /apix.
        return path == self.prefix or path.startswith(self.prefix + "/")


_ADMIN = (Rule("*"),)
_SERVICE_OPERATIONS = ("register", "deregister")


@dataclass(frozen=True)
class _Role:
    allow: tuple[Rule, ...]
    deny: tuple[Rule, ...]
    assert_caller: bool


class Policy:
    """The roles of meshgate.toml, compiled; answers whether a principal may take an action."""

    def __init__(self, roles: Mapping[str, RoleSettings], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.roles = {
            name: _Role(
                tuple(Rule.parse(r) for r in role.allow),
                tuple(Rule.parse(r) for r in role.deny),
                role.assert_caller,
            )
            for name, role in roles.items()
        }
        self.roles["admin"] = _Role(_ADMIN, (), True)
        self._allows = lru_cache(maxsize=65536)(self._decide)

    def allows(self, principal: Principal, action: Action) -> bool:
        if not self.enabled:
            return True
        return self._allows(principal.roles, principal.service, action)

    def check(self, principal: Principal, action: Action) -> None:
        """Raise Forbidden (403) unless the principal may take the action."""
        if not self.allows(principal, action):
            raise Forbidden(
                f"{principal.name} may not use {action.describe()}",
                extra={"principal": principal.name},
            )

    def may_assert_caller(self, principal: Principal) -> bool:
        """Whether the principal may name another caller in X-Meshgate-Caller."""
        if not self.enabled:
            return True
        return principal.service is None and any(
            self.roles[r].assert_caller for r in principal.roles if r in self.roles
        )

    def undefined(self, roles: Iterable[str]) -> list[str]:
        """Role names that no `[roles.NAME]` table defines (and are not built in)."""
        return sorted(r for r in roles if r not in self.roles)

    def _decide(self, roles: frozenset[str], service: str | None, action: Action) -> bool:
        if service is not None:
            # A service credential: its own registrations, nothing else.
            return (
                action.kind == "mesh"
                and action.name in _SERVICE_OPERATIONS
                and action.item == service
            )
        known = [self.roles[r] for r in roles if r in self.roles]
        if any(rule.covers(action) for role in known for rule in role.deny):
            return False
        return any(rule.covers(action) for role in known for rule in role.allow)
