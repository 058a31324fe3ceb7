"""The mesh API (`/api/v1/mesh/v2`): health for now; registration and tasks build on it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from meshgate.registry.base import Registry
from meshgate.router import Router


def build(router: Router, registry: Registry, *, node: str) -> APIRouter:
    api = APIRouter(prefix="/api/v1/mesh/v2", tags=["mesh"])

    @api.get("/health", summary="Mesh status: registry and per-service instance counts")
    async def health() -> Response:
        services: dict[str, dict[str, Any]] = {}
        for name, pool in router.supervisor.pools.items():
            counts = Counter(s.state.value for s in pool.slots)
            services[name] = {
                "kind": "mcp",
                "state": pool.state.value,
                "instances": dict(counts),
                "healthy": counts.get("healthy", 0),
                "desired": len(pool.slots),
            }
        degraded = any(s["healthy"] < s["desired"] for s in services.values())
        down = any(s["healthy"] == 0 for s in services.values())
        status = "down" if down else "degraded" if degraded else "ok"
        if not router.accepting:
            status = "draining"
        body = {
            "status": status,
            "node": node,
            "registry": registry.status(),
            "in_flight": router.in_flight,
            "services": services,
        }
        return Response(json.dumps(body), media_type="application/json")

    return api
