"""What `meshgate import kong` makes of a Kong file (`config.kong`), and that as TOML text: HTTP
service instances, their policy, routes, limits, mesh settings, and the notes of what was not
imported, as comments."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshgate.errors import ConfigError


@dataclass(frozen=True)
class Note:
    """Something of the Kong file that was not imported, or not exactly: where and why."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass(frozen=True)
class Limit:
    """One `[[limits]]` entry."""

    name: str
    match: str
    per: str
    rate_per_s: float
    burst: int


@dataclass
class Fragment:
    """The meshgate configuration a Kong file comes to."""

    source: str
    format_version: str = ""
    services: list[str] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: list[dict[str, Any]] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    mesh: dict[str, Any] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    comments: dict[str, list[str]] = field(default_factory=dict)  # by service
    own_port: bool = False  # a route takes one of meshgate's paths: the edge needs a port
    auth: list[str] = field(default_factory=list)  # the authentication plugins seen

    def instance(
        self,
        service: str,
        url: str,
        *,
        weight: int | None,
        check: dict[str, Any] | None,
        tags: list[str],
    ) -> None:
        entry: dict[str, Any] = {"name": service, "url": url}
        if weight is not None:
            entry["weight"] = weight
        entry["check"] = check if check is not None else {"type": "tcp"}
        if tags:
            entry["tags"] = tags
        self.instances.append(entry)

    def policy(self, service: str) -> dict[str, Any]:
        return self.policies.setdefault(service, {})

    def comment(self, service: str, text: str) -> None:
        self.comments.setdefault(service, []).append(text)

    def to_toml(self) -> str:
        return render(self)


class Context(Protocol):
    """What the readers of a Kong file's parts share (`config.kong._Reader`)."""

    out: Fragment

    def items(self, parent: dict[str, Any], name: str, key: str) -> list[tuple[str, Any]]: ...

    def fail(self, key: str, item: Any, message: str) -> ConfigError: ...

    def note(self, key: str, message: str) -> None: ...


def value(v: Any) -> str:
    """A TOML value: JSON's string escapes are TOML's."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _comment(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        lead = "  " if line.startswith("- ") else ""
        out += textwrap.wrap(line, 96, initial_indent="# ", subsequent_indent="# " + lead)
    return out


def render(f: Fragment) -> str:
    lines = _comment(
        f"meshgate configuration imported from {f.source} (Kong declarative configuration, "
        f"_format_version {f.format_version}) by `meshgate import kong`."
    )
    if f.notes:
        lines += ["#", "# Not imported, or not exactly (docs/operations.md, 'Moving from Kong'):"]
        lines += _comment("\n".join(f"- {n}" for n in f.notes))
    if f.auth:
        lines += [
            "#",
            f"# Kong authenticated callers ({', '.join(sorted(set(f.auth)))}). meshgate does",
            "# it for every request once [auth] is on (docs/security.md): API keys made",
            "# with `meshgate keys create`, or JWTs from an OIDC issuer ([auth.jwt]), and",
            "# roles that allow these services, for example:",
            "# [auth]",
            "# api_keys = true",
            "# [roles.client]",
            "# allow = [" + ", ".join(json.dumps(f"http:{s}") for s in f.services[:3]) + "]",
        ]
    lines.append("")
    if f.own_port:
        lines += [
            "# A route takes a path meshgate serves itself (/api, /mcp, ...): the routes get a",
            "# port of their own, as Kong's proxy port was.",
            "[edge]",
            "port = 8000",
            "on_main_port = false",
            "",
        ]
    if f.mesh:
        lines.append("[mesh]")
        lines += [f"{k} = {value(v)}" for k, v in f.mesh.items()]
        lines.append("")
    for name in f.services:
        lines += _comment("\n".join(f.comments.get(name, [])))
        for inst in (i for i in f.instances if i["name"] == name):
            lines.append("[[mesh.services]]")
            lines += [f"{k} = {value(v)}" for k, v in inst.items()]
            lines.append("")
        policy = f.policies.get(name)
        if policy:
            lines.append(f"[services.{_key(name)}]")
            lines += [f"{k} = {value(v)}" for k, v in policy.items()]
            lines.append("")
    for route in f.routes:
        lines.append("[[routes]]")
        lines += [f"{k} = {value(v)}" for k, v in route.items()]
        lines.append("")
    for limit in f.limits:
        lines.append("[[limits]]")
        lines += [f"{k} = {value(v)}" for k, v in limit.__dict__.items()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
