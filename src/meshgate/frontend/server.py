"""The MCP server that clients see: one server's catalog, or every server's, behind the router.

This module answers MCP requests; `meshgate.api.mcp_http` carries them over HTTP. A target is
one server's name (`/mcp/{name}`) or None for the aggregate (`/mcp`), where tool and prompt
names are namespaced `<server><separator><name>` and resource URIs are kept as the servers give
them, with the gateway remembering which server listed which URI or template.

Every request that needs a server goes through `Router.call`, so balancing, breakers, retries
and deadlines are the same as on the REST path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from meshgate import __version__
from meshgate.errors import (
    MeshgateError,
    NoHealthyInstance,
    UnknownTool,
)
from meshgate.frontend.bridge import Bridge
from meshgate.frontend.context import (
    RequestContext,
    bridgeable,
    str_param,
    upstream_params,
)
from meshgate.frontend.tasks import McpTasks
from meshgate.router import Router, tool_is_retry_safe
from meshgate.security import Principal
from meshgate.security.policy import Action
from meshgate.upstream.supervisor import ServerPool
from meshgate.wire.jsonrpc import (
    INVALID_PARAMS,
    JSON,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    JsonRpcError,
)
from meshgate.wire.protocol import HANDSHAKE_VERSIONS, STATELESS_VERSION

log = logging.getLogger("meshgate.frontend")

SUPPORTED_VERSIONS = (STATELESS_VERSION, *HANDSHAKE_VERSIONS)
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[0]
LIST_TTL_MS = 60_000
REMOVED_IN_STATELESS = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

# Methods answered by a server, with the capability that server must declare.
_LISTS = {
    "prompts/list": ("prompts", "prompts"),
    "resources/list": ("resources", "resources"),
    "resources/templates/list": ("resources", "resourceTemplates"),
}


@dataclass
class _Aggregate:
    """Which server answers a namespaced name or a URI, as of the last listing."""

    tools: dict[str, tuple[str, str]] = field(default_factory=dict)
    tools_versions: tuple[int, ...] = ()
    prompts: dict[str, tuple[str, str]] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    templates: list[tuple[re.Pattern[str], str]] = field(default_factory=list)


def _server_prefix(server: str) -> str:
    """A server name made safe for tool names: other characters become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", server)


def template_pattern(template: str) -> re.Pattern[str]:
    """A regular expression matching the URIs an RFC 6570 template can expand to."""
    out, pos = [], 0
    for m in re.finditer(r"\{([^}]*)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        op = m.group(1)[:1]
        out.append(".*" if op in ("+", "#", "/", "?", "&", ";", ".") else "[^/?#]*")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


class McpFront:
    """Answers one MCP request of a client, for one server or for all of them."""

    def __init__(
        self, router: Router, *, separator: str = "__", tasks: McpTasks | None = None
    ) -> None:
        self.router = router
        self.bridge = Bridge(router)
        self.separator = separator
        self.tasks = tasks
        self._agg = _Aggregate()

    # -- what servers and capabilities a target has --------------------------------------------

    def pools(self, target: str | None) -> list[ServerPool]:
        if target is None:
            return list(self.router.pools().values())
        return [self.router.pool(target)]

    def check_target(self, target: str | None) -> None:
        if target is not None:
            self.router.pool(target)  # raises UnknownService

    def capabilities(self, target: str | None, version: str | None = None) -> JSON:
        caps: JSON = {"tools": {"listChanged": True}}
        if self.tasks is not None and version is not None:
            caps.update(self.tasks.capabilities(version))
        for pool in self.pools(target):
            upstream = pool.identity.capabilities if pool.identity else {}
            for name in ("prompts", "resources"):
                if name in upstream:
                    caps[name] = {"listChanged": True}
            if "completions" in upstream:
                caps["completions"] = {}
            if "logging" in upstream:
                caps["logging"] = {}
        return caps

    def server_info(self, target: str | None) -> JSON:
        if target is None:
            return {"name": "meshgate", "title": "meshgate (every server)", "version": __version__}
        pool = self.router.pool(target)
        upstream = dict(pool.identity.server_info) if pool.identity else {}
        return {
            "name": target,
            "title": upstream.get("title") or upstream.get("name") or target,
            "version": str(upstream.get("version", __version__)),
        }

    def instructions(self, target: str | None) -> str | None:
        parts = []
        for pool in self.pools(target):
            text = pool.identity.instructions if pool.identity else None
            if text:
                parts.append(text if target is not None else f"[{pool.name}] {text}")
        return "\n\n".join(parts) or None

    def describe(self, target: str | None, version: str | None = None) -> JSON:
        """What `initialize` and `server/discover` share."""
        result: JSON = {
            "capabilities": self.capabilities(target, version),
            "serverInfo": self.server_info(target),
        }
        text = self.instructions(target)
        if text:
            result["instructions"] = text
        return result

    def ttl_ms(self, target: str | None, method: str) -> int:
        """An honest cache lifetime for a list result: only where every server behind the target
        announces changes (`listChanged`), which the gateway relays, may a client keep it."""
        if method == "server/discover":
            return 0
        capability = {"tools/list": "tools", "prompts/list": "prompts"}.get(method, "resources")
        for pool in self.pools(target):
            upstream = pool.identity.capabilities if pool.identity else {}
            declared = upstream.get(capability)
            if capability in upstream and not (
                isinstance(declared, dict) and declared.get("listChanged")
            ):
                return 0
        return 0 if method == "resources/read" else LIST_TTL_MS

    # -- dispatch ------------------------------------------------------------------------------

    async def dispatch(
        self, target: str | None, method: str, params: JSON, ctx: RequestContext
    ) -> JSON:
        """Answer one request (never `initialize`, which the transport owns)."""
        if ctx.stateless and method in REMOVED_IN_STATELESS:
            raise JsonRpcError(METHOD_NOT_FOUND, f"{method} is not part of protocol {ctx.version}")
        if method == "ping":
            return {}
        if method == "server/discover":
            return {
                "supportedVersions": list(SUPPORTED_VERSIONS),
                **self.describe(target, ctx.version),
            }
        if method == "tools/list":
            own = target is not None and ctx.pins is not None
            if own and self.router.pool(target or "").policy.mode == "dedicated":
                # The session's own process, whose tools may have changed on its own.
                tools = await self._list_all(target or "", method, "tools", ctx)
                return {"tools": [t for t in tools if self._may_call(ctx, target or "", t)]}
            return self._list_tools(target, ctx)
        if method == "tools/call":
            return await self._call_tool(target, params, ctx)
        if method.startswith("tasks/") and self.tasks is not None:
            return await self.tasks.handle(
                method, params, ctx.version, ctx.client_capabilities, ctx.ask, owner=ctx.session
            )
        if method in _LISTS:
            return await self._list(target, method, params, ctx)
        if method == "prompts/get":
            server, name = self._resolve_prompt(target, str_param(params, "name"))
            return await self._forward(server, method, {**params, "name": name}, ctx)
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            uri = str_param(params, "uri")
            return await self._forward(
                await self._resolve_uri(target, uri, ctx), method, params, ctx
            )
        if method == "completion/complete":
            return await self._complete(target, params, ctx)
        raise JsonRpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    # -- tools ---------------------------------------------------------------------------------

    def _list_tools(self, target: str | None, ctx: RequestContext) -> JSON:
        """The tools of a server, or of all (namespaced): those the caller may call."""
        tasks, version, gate = self.tasks, ctx.version, self.router.gate
        if target is not None:
            pool = self.router.pool(target)
            self._need_catalog(pool)
            names = sorted(pool.tools)
            if gate.enabled:
                names = [t for t in names if gate.allows(ctx.principal, Action.tool(target, t))]
            if tasks is None:
                return {"tools": [pool.tools[t] for t in names]}
            return {"tools": [tasks.annotate(pool, t, pool.tools[t], version) for t in names]}
        tools = []
        pools = self.router.pools()
        for public, (server, name) in self._aggregate_tools().items():
            if gate.enabled and not gate.allows(ctx.principal, Action.tool(server, name)):
                continue
            pool = pools[server]
            tool = dict(pool.tools[name])
            tool["name"] = public
            tools.append(tasks.annotate(pool, name, tool, version) if tasks is not None else tool)
        return {"tools": tools}

    def _may_call(self, ctx: RequestContext, server: str, tool: JSON) -> bool:
        gate = self.router.gate
        name = tool.get("name")
        return not gate.enabled or (
            isinstance(name, str) and gate.allows(ctx.principal, Action.tool(server, name))
        )

    def tool_schema(self, target: str | None, public: str) -> JSON | None:
        """The input schema of a tool by the name the client calls it, if it is known."""
        found = (
            (self._aggregate_tools().get(public) or self._split(public))
            if target is None
            else (target, public)
        )
        pool = self.router.pools().get(found[0]) if found else None
        tool = pool.tools.get(found[1]) if pool is not None and found is not None else None
        schema = tool.get("inputSchema") if tool is not None else None
        return schema if isinstance(schema, dict) else None

    def _need_catalog(self, pool: ServerPool) -> None:
        if not pool.tools and not pool.routable() and not pool.recoverable():
            raise NoHealthyInstance(f"{pool.name} has no healthy instance to list its tools")

    def prefix(self, pool: ServerPool) -> str:
        """What goes before a name of this server in /mcp: its namespace and the separator."""
        namespace = pool.policy.namespace
        if namespace is None:
            namespace = _server_prefix(pool.name)
        return namespace + self.separator if namespace else ""

    def _aggregate_tools(self) -> dict[str, tuple[str, str]]:
        pools = self.router.pools()
        versions = tuple(p.tools_version for p in pools.values())
        if versions != self._agg.tools_versions:
            table: dict[str, tuple[str, str]] = {}
            for pool in pools.values():
                prefix = self.prefix(pool)
                for name in sorted(pool.tools):
                    public = prefix + name
                    if public in table:
                        log.warning("tool name %s is ambiguous in /mcp; keeping the first", public)
                        continue
                    table[public] = (pool.name, name)
            self._agg.tools, self._agg.tools_versions = table, versions
        return self._agg.tools

    def _split(self, public: str) -> tuple[str, str] | None:
        """A namespaced name's (server, name), by the server prefixes currently known; servers
        without a prefix come last."""
        pools = sorted(self.router.pools().values(), key=lambda p: not self.prefix(p))
        for pool in pools:
            prefix = self.prefix(pool)
            if public.startswith(prefix):
                return pool.name, public[len(prefix) :]
        return None

    async def _call_tool(self, target: str | None, params: JSON, ctx: RequestContext) -> JSON:
        public = str_param(params, "name")
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise JsonRpcError(INVALID_PARAMS, "'arguments' must be an object")
        if target is None:
            found = self._aggregate_tools().get(public) or self._split(public)
            if found is None:
                raise UnknownTool(
                    f"no tool named {public!r}; /mcp names tools <server>{self.separator}<tool>"
                )
            server, tool = found
        else:
            server, tool = target, public
        pool = self.router.pool(server)
        # Admitted here, before a task may be made of it and before the tool is looked up:
        # identity and policy come first (a caller learns nothing of tools it may not use).
        call = await self.router.admit(ctx.call(server, tool, arguments))
        own_process = pool.policy.mode == "dedicated" and ctx.pins is not None
        if tool not in pool.tools and not own_process:  # a session's own process may differ
            self._need_catalog(pool)
            raise UnknownTool(f"{server} has no tool named {tool!r}")
        ctx.caller = call.caller
        tasks = self.tasks
        if tasks is not None and tasks.wants_task(
            pool, tool, params, ctx.version, ctx.client_capabilities
        ):
            return await tasks.create(
                server,
                tool,
                arguments,
                ctx.version,
                bridgeable(ctx),
                owner=ctx.session,
                caller=call.caller,
            )
        upstream = upstream_params(params, ctx, name=tool, arguments=arguments)
        return await self.bridge.call(
            server,
            "tools/call",
            upstream,
            ctx,
            retry_safe=tool_is_retry_safe(pool, tool),
            call=call,
        )

    async def run_task(self, task_id: str, target: JSON, timeout_s: float | None) -> JSON:
        """A queued tool call (how task workers call a tool): like a client's, with the server's
        questions put to the client through the task."""
        server, tool = target["server"], target["tool"]
        pool = self.router.pool(server)
        if tool not in pool.tools:
            self._need_catalog(pool)
            raise UnknownTool(f"{server} has no tool named {tool!r}")
        questions = (
            self.tasks.questions(task_id, timeout_s or pool.policy.call_timeout_s)
            if self.tasks is not None
            else None
        )
        ctx = RequestContext(
            LATEST_HANDSHAKE,
            stateless=False,
            ask=questions,
            client_capabilities=target.get("client_capabilities") or {},
            waiting=questions.waiting if questions is not None else None,
            timeout_s=timeout_s,
            caller=target.get("caller"),
            entry="task",
            principal=Principal.from_json(target.get("principal")),
        )
        arguments = target.get("arguments") or {}
        params = {"name": tool, "arguments": arguments}
        return await self.bridge.call(
            server,
            "tools/call",
            upstream_params(params, ctx),
            ctx,
            retry_safe=tool_is_retry_safe(pool, tool),
            call=ctx.call(server, tool, arguments),
        )

    # -- prompts, resources, completions -------------------------------------------------------

    def _serving(self, target: str | None, capability: str) -> list[ServerPool]:
        pools = self.pools(target)
        return [p for p in pools if p.identity and capability in p.identity.capabilities]

    async def _list(
        self, target: str | None, method: str, params: JSON, ctx: RequestContext
    ) -> JSON:
        capability, key = _LISTS[method]
        gate = self.router.gate
        if target is not None:
            pool = self.router.pool(target)
            if not self._serving(target, capability) or (
                gate.enabled and not gate.allows(ctx.principal, Action.server(target))
            ):
                return {key: []}  # a caller with only some tools of it has none of these
            return await self._forward(pool.name, method, params, ctx)
        # The aggregate lists everything in one page: each server's pages are followed here;
        # only servers the caller may use are asked.
        pools = self._serving(None, capability)
        if gate.enabled:
            pools = [p for p in pools if gate.allows(ctx.principal, Action.server(p.name))]
        pages = await asyncio.gather(
            *(self._list_all(p.name, method, key, ctx) for p in pools), return_exceptions=True
        )
        items: list[JSON] = []
        for pool, page in zip(pools, pages, strict=True):
            if isinstance(page, BaseException):
                if not isinstance(page, MeshgateError | JsonRpcError | TimeoutError):
                    raise page
                log.warning("%s on %s failed in /mcp: %s", method, pool.name, page)
                continue
            for item in page:
                items.append(self._remember(pool.name, key, item))
        return {key: items}

    async def _list_all(
        self, server: str, method: str, key: str, ctx: RequestContext
    ) -> list[JSON]:
        items: list[JSON] = []
        cursor: Any = None
        for _ in range(100):
            res = await self._forward(server, method, {"cursor": cursor} if cursor else {}, ctx)
            page = res.get(key)
            if isinstance(page, list):
                items.extend(i for i in page if isinstance(i, dict))
            cursor = res.get("nextCursor")
            if not cursor:
                break
        return items

    def _remember(self, server: str, key: str, item: JSON) -> JSON:
        if key == "prompts" and isinstance(item.get("name"), str):
            public = self.prefix(self.router.pool(server)) + item["name"]
            self._agg.prompts[public] = (server, item["name"])
            return {**item, "name": public}
        if key == "resources" and isinstance(item.get("uri"), str):
            self._agg.resources[item["uri"]] = server
        if key == "resourceTemplates" and isinstance(item.get("uriTemplate"), str):
            entry = (template_pattern(item["uriTemplate"]), server)
            if entry not in self._agg.templates:
                self._agg.templates.append(entry)
        return item

    def _resolve_prompt(self, target: str | None, public: str) -> tuple[str, str]:
        if target is not None:
            self.router.pool(target)
            return target, public
        found = self._agg.prompts.get(public) or self._split(public)
        if found is None:
            raise JsonRpcError(
                INVALID_PARAMS,
                f"no prompt named {public!r}; /mcp names prompts <server>{self.separator}<prompt>",
            )
        return found

    async def _resolve_uri(self, target: str | None, uri: str, ctx: RequestContext) -> str:
        if target is not None:
            self.router.pool(target)
            return target
        for attempt in range(2):
            server = self._agg.resources.get(uri)
            if server is None:
                server = next((s for p, s in self._agg.templates if p.match(uri)), None)
            if server is not None:
                return server
            if attempt == 0:  # not listed yet: list once, then look again
                await self._list(None, "resources/list", {}, ctx)
                await self._list(None, "resources/templates/list", {}, ctx)
        # 2026-07-28 answers an unknown resource with invalid params; earlier versions with -32002.
        code = INVALID_PARAMS if ctx.stateless else RESOURCE_NOT_FOUND
        raise JsonRpcError(code, f"no server lists a resource {uri!r}", {"uri": uri})

    async def _complete(self, target: str | None, params: JSON, ctx: RequestContext) -> JSON:
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise JsonRpcError(INVALID_PARAMS, "'ref' must be an object")
        if ref.get("type") == "ref/prompt":
            server, name = self._resolve_prompt(target, str_param(ref, "name"))
            params = {**params, "ref": {**ref, "name": name}}
        elif ref.get("type") == "ref/resource":
            server = await self._resolve_uri(target, str_param(ref, "uri"), ctx)
        else:
            raise JsonRpcError(INVALID_PARAMS, "'ref.type' must be 'ref/prompt' or 'ref/resource'")
        if not self._serving(server, "completions"):
            return {"completion": {"values": [], "hasMore": False}}
        return await self._forward(server, "completion/complete", params, ctx)

    async def _forward(self, server: str, method: str, params: JSON, ctx: RequestContext) -> JSON:
        return await self.bridge.call(
            server,
            method,
            upstream_params(params, ctx),
            ctx,
            retry_safe=method != "resources/subscribe",
        )
