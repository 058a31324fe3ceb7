"""Keeps a running Kong in step with meshgate's HTTP services, through Kong's Admin API: per
service NAME an upstream `<prefix>NAME` (created or replaced by `PUT /upstreams/{name}`) with
the active health check of the service's instances, and as targets the instances that are
healthy now (`host:port`, their weight), added (`POST .../targets`) and taken out
(`DELETE .../targets/{target}`) as instances come and go. A pass reads Kong first and writes
only what differs, so a pass with nothing changed writes nothing. Passes are woken by registry
changes and run every `sync_interval_s` anyway (putting back what was changed by hand); a
failed pass is retried with a growing backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from prometheus_client import Counter, Gauge

from meshgate.config.kong_sync import KongSyncSettings
from meshgate.config.registration import Check
from meshgate.observability.metrics import metrics
from meshgate.registry.base import InstanceRecord, Registry
from meshgate.resilience import BackoffPolicy, backoff_delay
from meshgate.services.mesh import ServiceInstance, ServiceMesh
from meshgate.urls import redact_url

log = logging.getLogger("meshgate.kong")

PASSES = Counter(
    "meshgate_kong_sync_passes",
    "Passes of the Kong sync, by outcome (ok or error)",
    ["outcome"],
    registry=metrics.registry,
)
WRITES = Counter(
    "meshgate_kong_sync_writes",
    "Writes to Kong's Admin API, by kind (upstream, add_target, remove_target)",
    ["kind"],
    registry=metrics.registry,
)
PENDING = Gauge(
    "meshgate_kong_sync_pending",
    "1 while a change of the registry is not yet in Kong",
    registry=metrics.registry,
)
LAST_SUCCESS = Gauge(
    "meshgate_kong_sync_last_success_timestamp_seconds",
    "When a pass last brought Kong in step (0: never)",
    registry=metrics.registry,
)


class KongSyncError(Exception):
    """An Admin API request that failed: what was asked and what Kong answered."""


def _target(inst: ServiceInstance) -> str | None:
    """The instance as a Kong target (`host:port`), from its base URL."""
    parts = urlsplit(inst.reg.base_url)
    if not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def _active(inst: ServiceInstance | None) -> dict[str, Any]:
    """Kong's active check for an instance's meshgate check; intervals 0 (Kong's own "off")
    for checks Kong cannot run (mcp, ttl): meshgate takes such instances out itself."""
    check = inst.reg.check if inst is not None else Check(type="ttl")
    off = {"healthy": {"interval": 0}, "unhealthy": {"interval": 0}}
    if check.type not in ("http", "tcp"):
        return off
    assert inst is not None
    parts = urlsplit(inst.reg.base_url)
    active: dict[str, Any] = {
        "type": "tcp" if check.type == "tcp" else parts.scheme or "http",
        "timeout": check.timeout_s,
        "healthy": {"interval": check.interval_s, "successes": check.healthy_after},
        "unhealthy": {
            "interval": check.interval_s,
            "tcp_failures": check.unhealthy_after,
            "timeouts": check.unhealthy_after,
        },
    }
    if check.type == "http":
        # meshgate checks under the instance's URL; Kong's targets have no path.
        active["http_path"] = parts.path.rstrip("/") + check.path
        active["unhealthy"]["http_failures"] = check.unhealthy_after
    return active


def _within(want: Any, have: Any) -> bool:
    """Whether Kong's `have` already says all `want` says (Kong adds its defaults)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_within(v, have.get(k)) for k, v in want.items())
    if isinstance(want, int | float) and not isinstance(want, bool):
        return isinstance(have, int | float) and float(want) == float(have)
    return bool(want == have)


class KongSync:
    """The background task keeping Kong's upstreams and targets as the registry has them."""

    def __init__(
        self,
        settings: KongSyncSettings,
        services: ServiceMesh,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.admin_url is not None
        self.settings = settings
        self.services = services
        self.registry = registry
        self.clock = clock
        self.known: set[str] = set()  # services synced by this process: emptied once gone
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failures = 0  # passes failed in a row
        self.passes = 0
        self.writes = 0
        self.pending = True  # nothing was synced yet
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._rng = random.Random()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        headers = {}
        if self.settings.admin_token:
            headers[self.settings.admin_token_header] = self.settings.admin_token
        self._client = httpx.AsyncClient(
            base_url=str(self.settings.admin_url),
            headers=headers,
            timeout=self.settings.timeout_s,
        )
        self.registry.subscribe(self._changed)
        PENDING.set(1)
        self._task = asyncio.create_task(self._run(), name="kong sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def _changed(self, record: InstanceRecord, previous: InstanceRecord | None) -> None:
        if record.kind == "http":
            self.pending = True
            PENDING.set(1)
            self._wake.set()

    def view(self) -> dict[str, Any]:
        """The sync's state, for `/health`."""
        return {
            "admin_url": redact_url(str(self.settings.admin_url)),
            "pending": self.pending,
            "last_success_at": self.last_success_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "failures_in_a_row": self.failures,
            "passes": self.passes,
            "writes": self.writes,
            "upstreams": sorted(self.settings.upstream_prefix + n for n in self.known),
        }

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BackoffPolicy(0.2, self.settings.retry_cap_s)
        while True:
            self._wake.clear()
            try:
                await self.sync_once()
            except (KongSyncError, httpx.HTTPError) as e:
                self.pending = True  # what the pass was to write may not be in Kong
                PENDING.set(1)
                self.failures += 1
                self.last_error = str(e) or type(e).__name__
                self.last_error_at = self.clock()
                PASSES.labels("error").inc()
                log.warning("Kong sync failed (%d in a row): %s", self.failures, self.last_error)
                # Full jitter may come near 0: a failing Admin API is still not hammered.
                await asyncio.sleep(max(0.1, backoff_delay(self.failures, backoff, self._rng)))
                continue
            self.failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.sync_interval_s)

    async def sync_once(self) -> int:
        """One full pass; the writes it made. KongSyncError when the Admin API fails."""
        self.pending = False  # a change from here on wakes the next pass
        PENDING.set(0)
        wanted = self._wanted()
        writes = 0
        for name in sorted(set(wanted) | self.known):
            targets, check = wanted.get(name, ({}, _active(None)))
            writes += await self._sync_service(name, targets, check)
        # A service gone has no target left in Kong now: later passes need not look at it.
        self.known = set(wanted)
        self.passes += 1
        self.writes += writes
        self.last_success_at = self.clock()
        LAST_SUCCESS.set(self.last_success_at)
        PASSES.labels("ok").inc()
        if self.pending:
            PENDING.set(1)
        if writes:
            log.info("Kong sync: %d change(s) written", writes)
        return writes

    def _wanted(self) -> dict[str, tuple[dict[str, int], dict[str, Any]]]:
        """Per service: its healthy instances as {target: weight}, and its active check."""
        out: dict[str, tuple[dict[str, int], dict[str, Any]]] = {}
        for name, pool in self.services.pools.items():
            instances = sorted(pool.instances.values(), key=lambda i: i.id)
            targets: dict[str, int] = {}
            for inst in instances:
                target = _target(inst) if inst.routable else None
                if target is not None:
                    targets[target] = max(targets.get(target, 0), inst.weight)
            first = next((i for i in instances if i.routable), instances[0] if instances else None)
            out[name] = (targets, _active(first))
        return out

    async def _sync_service(
        self, name: str, targets: dict[str, int], active: dict[str, Any]
    ) -> int:
        upstream = quote(self.settings.upstream_prefix + name, safe="")
        body = {
            "name": self.settings.upstream_prefix + name,
            "tags": ["meshgate"],
            "healthchecks": {"active": active},
        }
        writes = 0
        have = await self._call("GET", f"/upstreams/{upstream}", ok=(200, 404))
        if have is None or not _within(body, have):
            await self._call("PUT", f"/upstreams/{upstream}", body, ok=(200, 201))
            WRITES.labels("upstream").inc()
            writes += 1
        present = await self._targets(upstream)
        for target, weight in sorted(present.items()):
            if targets.get(target) != weight:
                # A weight changes by a new target: PATCH is not among the endpoints used.
                path = f"/upstreams/{upstream}/targets/{quote(target, safe=':')}"
                await self._call("DELETE", path, ok=(204, 404))
                WRITES.labels("remove_target").inc()
                writes += 1
                del present[target]
        for target, weight in sorted(targets.items()):
            if target not in present:
                body_t = {"target": target, "weight": weight, "tags": ["meshgate"]}
                await self._call("POST", f"/upstreams/{upstream}/targets", body_t, ok=(201,))
                WRITES.labels("add_target").inc()
                writes += 1
        return writes

    async def _targets(self, upstream: str) -> dict[str, int]:
        """An upstream's targets in Kong as {target: weight}, every page of them."""
        out: dict[str, int] = {}
        path: str | None = f"/upstreams/{upstream}/targets"
        while path is not None:
            page = await self._call("GET", path, ok=(200,))
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise KongSyncError(f"GET {path}: expected {{'data': [...]}} from Kong")
            for t in data:
                if isinstance(t, dict) and isinstance(t.get("target"), str):
                    out[t["target"]] = int(t.get("weight", 100))
            following = page.get("next")
            path = following if isinstance(following, str) and following else None
        return out

    async def _call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...]) -> Any:
        """One Admin API request; its JSON (None for a 404 or no body). KongSyncError for a
        status not in `ok`."""
        assert self._client is not None
        r = await self._client.request(method, path, json=body)
        if r.status_code not in ok:
            try:
                detail = r.json().get("message", r.text)
            except ValueError:
                detail = r.text
            raise KongSyncError(f"{method} {path}: {r.status_code} {str(detail)[:200]}")
        if r.status_code in (204, 404) or not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise KongSyncError(f"{method} {path}: {r.status_code} without JSON") from None
