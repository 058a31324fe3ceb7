"""Kong's declarative configuration (`kong.yml`, `_format_version` 3.0 or 2.1, YAML or JSON)
as a `meshgate.toml` fragment: services and their upstreams' targets become HTTP service
instances (`[[mesh.services]]`) with checks and weights, the upstream's algorithm and the
service's timeouts and retries become `[services.NAME]` policy, routes become `[[routes]]`,
and the plugins meshgate has an equivalent for become `[[limits]]` or settings
(`config.kong_plugins`). Whatever has no equivalent is listed as a note, in the output's
comments and for the caller to print, never dropped silently. Pure: text in, text out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from meshgate.config.kong_plugins import map_plugin
from meshgate.config.kong_toml import Fragment, Limit, Note
from meshgate.config.kong_upstreams import Upstream, read_upstreams
from meshgate.config.routes import reserved
from meshgate.errors import ConfigError

FORMATS = ("3.0", "2.1")
_KNOWN_TOP = {"_format_version", "_transform", "_info", "_workspace", "_comment"}
_ENTITIES = {"services", "routes", "upstreams", "targets", "plugins"}
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")


class KongError(ConfigError):
    """A Kong file that cannot be imported; the detail says where (file, line, key)."""


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line it starts on."""

    line: int | None = None


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no types
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Any:
    data = _Map()
    data.line = node.start_mark.line + 1
    yield data
    data.update(loader.construct_mapping(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def parse(text: str, source: str = "kong.yml") -> dict[str, Any]:
    """The file's top-level mapping; KongError with the line and column of a syntax error."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise KongError(f"{source}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    else:
        try:
            data = yaml.load(text, Loader=_Loader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
            raise KongError(f"{where}: invalid YAML: {e.problem or e.context}") from None
        except yaml.YAMLError as e:
            raise KongError(f"{source}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise KongError(f"{source}: expected a mapping with _format_version and services")
    return data


@dataclass
class _Service:
    name: str
    key: str  # where it is in the file
    url: str  # scheme://host:port
    host: str
    path: str
    protocol: str
    raw: dict[str, Any]
    routes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class _Reader:
    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.out = Fragment(source=source)
        self.services: dict[str, _Service] = {}  # by Kong name and by id
        self.names: set[str] = set()
        self.skipped: set[str] = set()  # services not imported, by Kong name and id
        self.routes: dict[str, str | None] = {}  # routes by name and id: their service, if in

    def where(self, key: str, item: Any) -> str:
        line = getattr(item, "line", None)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"

    def fail(self, key: str, item: Any, message: str) -> KongError:
        return KongError(f"{self.where(key, item)}: {message}")

    def note(self, key: str, message: str) -> None:
        self.out.notes.append(Note(key, message))

    def items(self, parent: dict[str, Any], name: str, key: str) -> list[tuple[str, Any]]:
        value = parent.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"{key}{name}", parent, "expected a list")
        out = []
        for n, item in enumerate(value):
            k = f"{key}{name}[{n}]"
            if not isinstance(item, dict):
                raise self.fail(k, parent, "expected a mapping")
            out.append((k, item))
        return out

    def run(self) -> Fragment:
        data = self.data
        version = data.get("_format_version")
        if version is None:
            raise self.fail("_format_version", data, "missing; Kong files declare '3.0'")
        if str(version) not in FORMATS:
            raise self.fail(
                "_format_version",
                data,
                f"{version!r} is not supported; expected '3.0' (Kong 3.x) or '2.1' (Kong 2.x)",
            )
        self.out.format_version = str(version)
        for key in sorted(set(data) - _KNOWN_TOP - _ENTITIES):
            self.note(key, _OTHER_ENTITIES.get(key, "not a Kong entity meshgate imports"))
        upstreams = read_upstreams(self, data)
        for key, svc in self.items(data, "services", ""):
            self._service(key, svc, upstreams)
        for key, route in self.items(data, "routes", ""):
            ref = route.get("service")
            if ref is None:
                raise self.fail(f"{key}.service", route, "a top-level route names its service")
            self._route(key, route, self._find(f"{key}.service", route, ref))
        for key, plugin in self.items(data, "plugins", ""):
            self._plugin(key, plugin, self._scope(key, plugin))
        used = {s.host for s in self.services.values()}
        for up in {id(u): u for u in upstreams.values()}.values():
            if up.name not in used:
                self.note(up.key, f"upstream {up.name!r} is used by no service: not imported")
        return self.out

    def _find(self, key: str, item: Any, ref: Any) -> _Service | None:
        """The service a reference names (a name, an id, or {name: ...} / {id: ...})."""
        name = ref.get("name") or ref.get("id") if isinstance(ref, dict) else ref
        if not isinstance(name, str):
            raise self.fail(key, item, "expected a service name or id")
        if name not in self.services:
            if name in self.skipped:
                return None
            raise self.fail(key, item, f"no service named {name!r} in this file")
        return self.services[name]

    def _service(self, key: str, svc: dict[str, Any], upstreams: dict[str, Upstream]) -> None:
        given = svc.get("name") or svc.get("id")
        kong_name = str(given) if given is not None else f"service-{len(self.services) + 1}"
        if svc.get("enabled") is False:
            self._skip(key, svc, kong_name, "is disabled (enabled: false)")
            return
        protocol, host, port, path = self._where(key, svc)
        if protocol not in ("http", "https"):
            self._skip(key, svc, kong_name, f"uses protocol {protocol!r}; meshgate proxies HTTP")
            return
        name = _NAME_BAD.sub("-", kong_name)[:64]
        if name in self.names:
            raise self.fail(key, svc, f"two services are named {name!r} once made valid names")
        if name != kong_name:
            self.note(key, f"service {kong_name!r} is named {name!r} (meshgate's name rules)")
        self.names.add(name)
        url = f"{protocol}://{host}:{port}" if port else f"{protocol}://{host}"
        service = _Service(name, key, url, host, path, protocol, svc)
        for ref in {kong_name, str(svc.get("id", kong_name))}:
            self.services[ref] = service
        self.out.services.append(name)
        upstream = upstreams.get(host)
        if upstream is not None:
            upstream.apply(self, service.name, protocol, path)
        else:
            self.out.instance(name, url + path, weight=None, check=None, tags=_tags(svc))
            self.out.comment(
                name,
                "Kong ran no active health check on a plain host: a TCP check (meshgate's "
                "default would GET /health) keeps a closed port out",
            )
        self._policy(key, svc, name)
        for attr in ("tls_verify", "tls_verify_depth", "client_certificate", "ca_certificates"):
            if svc.get(attr) not in (None, [], False) or (attr == "tls_verify" and svc.get(attr)):
                self.note(
                    f"{key}.{attr}",
                    "per-service TLS settings are not imported: meshgate has one set for every "
                    "upstream (mesh.upstream_ca_file, upstream_client_cert)",
                )
        for rkey, route in self.items(svc, "routes", f"{key}."):
            if route.get("service") is not None:
                self._find(f"{rkey}.service", route, route["service"])
            self._route(rkey, route, service)
        for pkey, plugin in self.items(svc, "plugins", f"{key}."):
            self._plugin(pkey, plugin, ("service", service.name))

    def _skip(self, key: str, svc: dict[str, Any], name: str, why: str) -> None:
        self.skipped.add(name)
        if svc.get("id") is not None:
            self.skipped.add(str(svc["id"]))
        self.note(key, f"service {name!r} {why}: not imported, nor its routes and plugins")

    def _where(self, key: str, svc: dict[str, Any]) -> tuple[str, str, int | None, str]:
        url = svc.get("url")
        if url is not None:
            if not isinstance(url, str):
                raise self.fail(f"{key}.url", svc, "expected a URL")
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                raise self.fail(f"{key}.url", svc, f"{url!r} has a bad port") from None
            if not parts.scheme or not parts.hostname:
                raise self.fail(f"{key}.url", svc, f"{url!r} is not a URL with a host")
            return parts.scheme.lower(), parts.hostname, port, parts.path.rstrip("/")
        host = svc.get("host")
        if not isinstance(host, str) or not host:
            raise self.fail(key, svc, "a service gives url, or host (with protocol, port, path)")
        protocol = str(svc.get("protocol", "http")).lower()
        port = svc.get("port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise self.fail(f"{key}.port", svc, f"{port!r} is not a port")
        path = svc.get("path") or ""
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise self.fail(f"{key}.path", svc, "expected a path starting with '/'")
        return protocol, host, port, path.rstrip("/")

    def _policy(self, key: str, svc: dict[str, Any], name: str) -> None:
        timeouts = {}
        for attr in ("connect_timeout", "read_timeout", "write_timeout"):
            value = svc.get(attr, 60000)
            if not isinstance(value, int) or value < 1:
                raise self.fail(f"{key}.{attr}", svc, "expected milliseconds (a whole number)")
            timeouts[attr] = value
        # One deadline per call in meshgate: a connect, then the wait for the answer.
        self.out.policy(name)["call_timeout_s"] = (
            timeouts["connect_timeout"] + timeouts["read_timeout"]
        ) / 1000
        retries = svc.get("retries", 5)
        if not isinstance(retries, int) or retries < 0:
            raise self.fail(f"{key}.retries", svc, "expected a whole number")
        attempts = min(retries + 1, 10)
        if attempts != retries + 1:
            self.note(f"{key}.retries", f"{retries} retries: meshgate tries at most 10 times")
        self.out.policy(name)["retry"] = {"max_attempts": attempts}

    def _route(self, key: str, route: dict[str, Any], service: _Service | None) -> None:
        label = route.get("name") or route.get("id") or key
        for ref in (route.get("name"), route.get("id")):
            if ref is not None:
                self.routes[str(ref)] = None  # a route's plugins find it here once imported
        if service is None:
            self.note(key, f"route {label!r}: its service is not imported, so neither is it")
            return
        protocols = route.get("protocols") or ["http", "https"]
        if not any(p in ("http", "https") for p in protocols):
            self.note(key, f"route {label!r}: protocols {protocols} are not HTTP: not imported")
            return
        for attr, why in _ROUTE_SKIP.items():
            if route.get(attr):
                self.note(f"{key}.{attr}", f"route {label!r}: {why}: not imported")
                return
        for attr, why in _ROUTE_NOTES.items():
            value = route.get(attr)
            if value not in (None, [], _ROUTE_DEFAULTS.get(attr)):
                self.note(f"{key}.{attr}", f"route {label!r}: {why}")
        paths, hosts = self._route_paths(key, route, label), self._route_hosts(key, route, label)
        if paths is None or hosts is None:
            return
        methods = [str(m).upper() for m in route.get("methods") or []]
        if not (paths or hosts or methods):
            self.note(key, f"route {label!r} matches nothing meshgate can match: not imported")
            return
        out: dict[str, Any] = {"service": service.name}
        if route.get("name"):
            out["name"] = _NAME_BAD.sub("-", str(route["name"]))[:128]
        for attr, value in (("hosts", hosts), ("paths", paths), ("methods", methods)):
            if value:
                out[attr] = value
        out["strip_path"] = bool(route.get("strip_path", True))
        out["preserve_host"] = bool(route.get("preserve_host", False))
        if any(reserved(p.rstrip("/") or "/") for p in paths):
            self.out.own_port = True
        self.out.routes.append(out)
        for ref in (route.get("name"), route.get("id")):
            if ref is not None:
                self.routes[str(ref)] = service.name
        for pkey, plugin in self.items(route, "plugins", f"{key}."):
            self._plugin(pkey, plugin, ("route", service.name))

    def _route_paths(self, key: str, route: dict[str, Any], label: str) -> list[str] | None:
        given = route.get("paths") or []
        paths = []
        for path in given:
            regex = str(path).startswith("~") or (
                self.out.format_version == "2.1" and re.search(r"[\\^$*+?()\[\]{}|]", str(path))
            )
            if regex:
                self.note(f"{key}.paths", f"route {label!r}: regex path {path!r} not imported")
            elif not str(path).startswith("/"):
                raise self.fail(f"{key}.paths", route, f"{path!r} does not start with '/'")
            else:
                paths.append(str(path))
        if given and not paths:
            self.note(key, f"route {label!r}: none of its paths can be imported: not imported")
            return None
        return paths

    def _route_hosts(self, key: str, route: dict[str, Any], label: str) -> list[str] | None:
        given = route.get("hosts") or []
        hosts = []
        for host in given:
            host = str(host).lower()
            if host.endswith(".*"):
                self.note(f"{key}.hosts", f"route {label!r}: trailing wildcard {host!r} skipped")
            else:
                hosts.append(host)
        if given and not hosts:
            self.note(key, f"route {label!r}: none of its hosts can be imported: not imported")
            return None
        return hosts

    def _scope(self, key: str, plugin: dict[str, Any]) -> tuple[str, str | None]:
        """(global, service or route; the meshgate service) of a top-level plugin."""
        if plugin.get("route") is not None:
            ref = plugin["route"]
            name = ref.get("name") or ref.get("id") if isinstance(ref, dict) else ref
            if str(name) not in self.routes:
                raise self.fail(f"{key}.route", plugin, f"no route named {name!r} in this file")
            imported = self.routes[str(name)]
            return ("route", imported) if imported else ("skipped", None)
        if plugin.get("service") is not None:
            service = self._find(f"{key}.service", plugin, plugin["service"])
            return ("service", service.name) if service else ("skipped", None)
        return "global", None

    def _plugin(self, key: str, plugin: dict[str, Any], scope: tuple[str, str | None]) -> None:
        name = plugin.get("name")
        if not isinstance(name, str):
            raise self.fail(f"{key}.name", plugin, "a plugin has a name")
        if scope[0] == "skipped":
            self.note(key, f"plugin {name}: its service or route is not imported, nor is it")
            return
        if plugin.get("enabled") is False:
            self.note(key, f"plugin {name} is disabled (enabled: false): not imported")
            return
        if plugin.get("consumer") is not None:
            self.note(key, f"plugin {name} applies to one consumer: not imported (see [roles])")
            return
        config = plugin.get("config") or {}
        if not isinstance(config, dict):
            raise self.fail(f"{key}.config", plugin, "expected a mapping")
        try:
            map_plugin(self.out, key, name, config, scope)
        except ValueError as e:
            raise self.fail(key, plugin, str(e)) from None


def _tags(item: dict[str, Any]) -> list[str]:
    tags = item.get("tags") or []
    return [str(t) for t in tags if isinstance(t, str | int) and 0 < len(str(t)) <= 64][:32]


_OTHER_ENTITIES = {
    "consumers": "consumers are not imported: meshgate's callers are API keys "
    "(`meshgate keys create`), JWT subjects or client certificates, with [roles]",
    "certificates": "certificates are not imported: meshgate serves one (mesh.tls_cert)",
    "ca_certificates": "CA certificates are not imported: see mesh.upstream_ca_file and "
    "mesh.tls_client_ca",
    "snis": "SNIs are not imported: meshgate serves one certificate (mesh.tls_cert)",
    "keyauth_credentials": "key-auth credentials are not imported: make API keys with "
    "`meshgate keys create` (keys are hashed; Kong's cannot be carried over)",
    "jwt_secrets": "JWT secrets are not imported: meshgate checks JWTs against an OIDC "
    "issuer's published keys ([auth.jwt])",
    "basicauth_credentials": "basic-auth credentials are not imported: meshgate has no "
    "passwords; use API keys or JWTs ([auth])",
    "acls": "ACL groups are not imported: give roles ([roles.NAME]) to keys or JWT claims",
    "vaults": "vaults are not imported: meshgate reads secrets from its environment",
}
_ROUTE_SKIP = {
    "headers": "matching on headers is not supported (importing it without would take "
    "requests it never took)",
    "snis": "matching on SNI is not supported",
    "sources": "matching on source addresses is not supported",
    "destinations": "matching on destination addresses is not supported",
}
_ROUTE_DEFAULTS: dict[str, Any] = {
    "https_redirect_status_code": 426,
    "regex_priority": 0,
    "path_handling": "v0",
    "request_buffering": True,
    "response_buffering": True,
}
_ROUTE_NOTES = {
    "https_redirect_status_code": "no redirect to HTTPS: meshgate serves what it listens for",
    "regex_priority": "regex_priority has no effect (regex paths are not imported)",
    "path_handling": "path_handling v1 (service path as a plain prefix) is not supported: "
    "paths are joined as segments (v0)",
    "request_buffering": "request bodies are streamed unless the method is idempotent, "
    "whatever request_buffering says",
    "response_buffering": "responses are always streamed",
}


def convert(text: str, source: str = "kong.yml") -> Fragment:
    """The meshgate fragment for a Kong file's text; KongError when it cannot be read."""
    return _Reader(parse(text, source), source).run()


__all__ = ["FORMATS", "Fragment", "KongError", "Limit", "Note", "convert", "parse"]
