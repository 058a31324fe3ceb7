"""What a pool hears from its servers: catalog changes (listed again, then told to the
sessions that watch the pool), other notifications passed on, and server-to-client requests,
which a shared pool cannot put to any one client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from meshgate.config import ServerPolicy
from meshgate.upstream.instance import Instance
from meshgate.wire import protocol
from meshgate.wire.connection import ConnectionLost
from meshgate.wire.jsonrpc import JSON, METHOD_NOT_FOUND, JsonRpcError

log = logging.getLogger("meshgate.supervisor")

# Notifications a pool passes on to the client sessions that watch it.
FORWARDED_NOTIFICATIONS = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    }
)
Subscriber = Callable[[str, str, JSON], None]  # (server, method, params)

LISTEN_TIMEOUT_S = 365 * 24 * 3600.0  # a subscription lasts as long as its instance


class Catalog:
    """The catalog and messages part of a ServerPool (its state is the pool's)."""

    name: str
    policy: ServerPolicy
    tools: dict[str, JSON]
    tools_version: int
    subscribers: set[Subscriber]
    _instance_tasks: set[asyncio.Task[None]]
    _refresh: asyncio.Task[None] | None
    _catalog_stale: bool

    # The pool's own, used here.
    local_routable: Callable[[], list[Instance]]

    def _listen(self, inst: Instance) -> None:
        """A stateless server announces catalog changes only on a `subscriptions/listen`
        stream: keep one open per instance, for the lists it says can change."""
        caps = inst.identity.capabilities if inst.identity else {}
        wanted = {
            key: True
            for capability, key in (
                ("tools", "toolsListChanged"),
                ("prompts", "promptsListChanged"),
                ("resources", "resourcesListChanged"),
            )
            if isinstance(caps.get(capability), dict) and caps[capability].get("listChanged")
        }
        if not wanted:
            return

        async def listen() -> None:
            try:
                await inst.conn.request(
                    "subscriptions/listen",
                    {"notifications": wanted},
                    timeout=LISTEN_TIMEOUT_S,
                    internal=True,
                )
            except JsonRpcError as e:
                log.debug("%s: no subscriptions/listen (%s)", inst.id, e)
            except ConnectionLost:
                pass

        task = asyncio.create_task(listen(), name=f"listen {inst.id}")
        self._instance_tasks.add(task)
        task.add_done_callback(self._instance_tasks.discard)

    def _on_notification(self, method: str, params: JSON) -> None:
        if method == "notifications/tools/list_changed":
            # One refresh at a time; a burst of notifications needs only one more listing.
            # Watchers hear of it once the new catalog is in place (`_set_catalog`).
            self._catalog_stale = True
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(self._refresh_tools(), name="refresh tools")
        elif method in FORWARDED_NOTIFICATIONS:
            self._publish(method, params)
        elif method == "notifications/message":
            log.info("%s log: %s", self.name, params.get("data"))

    def _publish(self, method: str, params: JSON) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber(self.name, method, params)
            except Exception:  # a broken watcher must not break the pool
                log.exception("%s: subscriber failed on %s", self.name, method)

    async def _refresh_tools(self) -> None:
        while self._catalog_stale:
            self._catalog_stale = False
            for inst in self.local_routable():
                try:
                    tools = await protocol.list_tools(inst.conn, timeout=self.policy.call_timeout_s)
                except (TimeoutError, ConnectionLost, JsonRpcError) as e:
                    log.warning("%s: refreshing tools failed: %s", inst.id, e)
                    continue
                self._set_catalog(tools)
                break

    def set_catalog(self, tools: Iterable[JSON]) -> None:
        """Take a catalog listed elsewhere (a peer node's); watchers hear of a change."""
        self._set_catalog(tools)

    def _set_catalog(self, tools: Iterable[JSON]) -> None:
        catalog = {t["name"]: t for t in tools}
        if self.tools_version == 0:  # the first listing
            self.tools, self.tools_version = catalog, 1
        elif catalog != self.tools:
            self.tools = catalog
            self.tools_version += 1
            self._publish("notifications/tools/list_changed", {})

    async def _on_server_request(self, method: str, params: JSON) -> JSON:
        if method == "ping":
            return {}
        if method == "roots/list":
            return {"roots": []}
        raise JsonRpcError(
            METHOD_NOT_FOUND,
            f"meshgate does not forward server-to-client request {method!r} in shared mode: "
            "there is no single client session to ask",
        )
