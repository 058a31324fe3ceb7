"""Composition root: builds every part from Settings and owns the start and stop order.

Start: config -> registry -> supervisor (spawn + verify) -> router -> listeners.
Stop runs it backwards: stop accepting, drain in-flight calls up to the grace period,
terminate every child process group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from meshgate import __version__
from meshgate.api import (
    consul,
    dashboard,
    mcp_rest,
    mesh,
    mesh_compat,
    mesh_status,
    observability,
    openapi,
    problems,
    tasks,
)
from meshgate.api import keys as api_keys
from meshgate.api.auth import Authentication, build_metadata, operation_check
from meshgate.api.edge import EdgePort, EdgeRoute, RouteTable, edge_app, route_hosts
from meshgate.api.etag import ConditionalGet
from meshgate.api.forwarding import TrustedForwarding, TrustedProxies
from meshgate.api.guard import RequestGuard, allowed_hosts
from meshgate.api.mcp_http import McpHttp
from meshgate.api.mcp_http.entry import McpEntry, mcp_routes
from meshgate.api.mcp_http.relay import SessionRelay
from meshgate.api.mesh_views import MeshViews
from meshgate.api.node_relay import NodeRelay
from meshgate.api.proxying import HttpProxy
from meshgate.config import Settings
from meshgate.config.tls import redis_options, upstream_context
from meshgate.crypto import Cipher
from meshgate.errors import ConfigError
from meshgate.frontend.server import McpFront
from meshgate.frontend.sessions import SessionStore
from meshgate.frontend.tasks import McpTasks
from meshgate.memory import FrozenSurvivors
from meshgate.observability import tracing
from meshgate.observability.metrics import set_node
from meshgate.registry import open_registry
from meshgate.registry.overrides import open_overrides
from meshgate.registry.store import RegistrationStore
from meshgate.router import Router
from meshgate.router.cluster import SESSION_TAG_SEP, Cluster, session_tag
from meshgate.router.interceptors import build_chain
from meshgate.router.overrides import RuntimePolicy
from meshgate.security.authn import Authenticator
from meshgate.security.gate import Gate
from meshgate.security.jwt import JwtVerifier
from meshgate.security.keys import keys_path, open_key_store
from meshgate.security.limits import open_limiter
from meshgate.security.nodes import NodeCredentials
from meshgate.security.policy import Policy
from meshgate.services.mesh import ServiceMesh
from meshgate.services.policy import RegistrationPolicy
from meshgate.storage import check_dir, check_file
from meshgate.tasks import QueueBounds, open_queue
from meshgate.tasks.workers import Workers
from meshgate.upstream.supervisor import Supervisor

log = logging.getLogger("meshgate")


def check_storage(settings: Settings) -> None:
    """Check before start that durable state can be written where the settings put it: the
    data dir (created if missing) and each SQLite file in use; ConfigError with one clear
    sentence otherwise."""
    files = [(settings.registrations_path, "registry database")]
    if settings.mesh.queue == "embedded":
        files.append((settings.tasks_path, "task database"))
    files.append((keys_path(settings), "API key database"))
    data_dir = settings.data_dir
    if data_dir is not None and any(p is not None and p.parent == data_dir for p, _ in files):
        check_dir(data_dir, "data dir")
    for path, what in files:
        if path is not None:
            check_file(path, what)


def build_app(settings: Settings) -> FastAPI:
    """The ASGI application for these settings; processes start in its lifespan."""
    tracing.setup(
        enabled=settings.mesh.tracing,
        ratio=settings.mesh.trace_sample_ratio,
        keep=settings.mesh.traces_kept,
        node=settings.node_id,
    )
    set_node(settings.node_id)
    cipher = Cipher(settings.mesh.encryption_key_list())
    registry = open_registry(
        settings.mesh.registry,
        node=settings.node_id,
        lease_s=settings.mesh.registry_lease_s,
        redis_options=redis_options(settings.mesh.registry, settings.mesh),
        cipher=cipher,
    )
    upstream_tls = upstream_context(settings.mesh)
    supervisor = Supervisor(
        settings.servers.values(), node=settings.node_id, registry=registry, tls=upstream_tls
    )
    security = settings.security
    secret = settings.mesh.cluster_secret
    if secret is None and security.auth_enabled and settings.shared_registry:
        raise ConfigError(
            "[auth] is on and the registry is shared: set cluster_secret "
            "(MESHGATE_CLUSTER_SECRET), the same on every node, so that nodes can sign the "
            "calls they forward to each other"
        )
    credentials = NodeCredentials(secret, settings.node_id) if secret is not None else None
    cluster = Cluster(
        node=settings.node_id,
        url=settings.advertise_url(),
        registry=registry,
        supervisor=supervisor,
        lease_s=settings.mesh.registry_lease_s,
        credentials=credentials,
        remote_policy=settings.default_policy,
        tls=upstream_tls,
    )
    services = ServiceMesh(
        RegistrationStore(settings.registrations_path, cipher=cipher),
        registry,
        node=settings.node_id,
        policy=settings.default_policy,
        policies=settings.service_policies,
        registration=RegistrationPolicy.of(
            allowed=settings.mesh.registration_allowed_networks,
            denied=settings.mesh.registration_denied_networks,
            allow_loopback=settings.mesh.registration_allow_loopback,
            allow_private=settings.mesh.registration_allow_private,
            resolve_timeout_s=settings.mesh.registration_resolve_timeout_s,
            listen_host=settings.mesh.host,
            listen_port=settings.mesh.port,
        ),
        tls=upstream_tls,
    )
    policy = Policy(security.roles, enabled=security.auth_enabled)
    router = Router(
        supervisor,
        services,
        interceptors=build_chain(list(settings.mesh.interceptors)),
        gate=Gate(
            policy,
            limits=security.limits,
            limiter=open_limiter(
                settings.rate_limit_store,
                options=redis_options(settings.rate_limit_store, settings.mesh),
            )
            if security.limits
            else None,
        ),
        min_timeout_s=settings.mesh.min_call_timeout_s,
        audit_tool_calls=security.auth_enabled
        if settings.mesh.audit_tool_calls is None
        else settings.mesh.audit_tool_calls,
        cluster=cluster,
        max_hops=settings.mesh.max_hops,
    )
    cluster.load = lambda: router.in_flight
    runtime_policy = RuntimePolicy(
        router,
        open_overrides(
            settings.mesh.registry,
            path=settings.registrations_path,
            redis_options=redis_options(settings.mesh.registry, settings.mesh),
        ),
    )
    auth = security.auth
    jwt = JwtVerifier(auth.jwt) if auth is not None and auth.jwt is not None else None
    keys = open_key_store(settings)
    authenticator = Authenticator(auth, keys=keys, jwt=jwt, nodes=credentials)
    workers = Workers(
        open_queue(
            settings.mesh.queue,
            settings.tasks_path,
            bounds=QueueBounds(
                max_queued=settings.mesh.max_queued_tasks,
                max_queued_per_target=settings.mesh.max_queued_tasks_per_target,
                max_kept=settings.mesh.max_kept_tasks,
            ),
            redis_options=redis_options(settings.mesh.queue, settings.mesh),
            cipher=cipher,
        ),
        router,
        node=settings.node_id,
        concurrency=settings.mesh.task_concurrency,
        lease_s=settings.mesh.task_lease_s,
        result_ttl_s=settings.mesh.task_result_ttl_s,
        limits=settings.task_limit,
    )
    mesh_settings = settings.mesh
    mcp_tasks = McpTasks(workers)
    front = McpFront(router, separator=mesh_settings.namespace_separator, tasks=mcp_tasks)
    workers.tool_call = front.run_task
    mcp_http = McpHttp(
        front,
        SessionStore(
            max_sessions=mesh_settings.max_sessions,
            idle_timeout_s=mesh_settings.session_idle_timeout_s,
            max_per_principal=mesh_settings.max_sessions_per_principal,
            unused_timeout_s=mesh_settings.session_unused_timeout_s,
            id_prefix=session_tag(settings.node_id) + SESSION_TAG_SEP,
        ),
        max_body_bytes=mesh_settings.max_body_bytes,
        allowed_origins=mesh_settings.allowed_origins,
        max_json_depth=mesh_settings.max_json_depth,
        relay=SessionRelay(
            cluster,
            credentials,
            max_hops=mesh_settings.max_hops,
            max_body_bytes=mesh_settings.max_body_bytes,
            tls=upstream_tls,
        ),
    )
    mcp_http.attach(supervisor)
    # Operations on an HTTP service instance another node registered go to that node.
    instance_relay = NodeRelay(
        cluster,
        credentials,
        max_hops=mesh_settings.max_hops,
        max_body_bytes=mesh_settings.max_body_bytes,
        tls=upstream_tls,
    )
    cluster.watchers.append(mcp_http.relay)
    mcp_tasks.notify = mcp_http.notify_session
    consul_api = (
        consul.ConsulApi(
            router,
            services,
            registry,
            settings=settings.consul,
            node=settings.node_id,
            url=cluster.url,
            max_body_bytes=mesh_settings.max_body_bytes,
            max_json_depth=mesh_settings.max_json_depth,
        )
        if settings.consul.enabled
        else None
    )

    kong_sync = None
    if settings.kong.enabled:
        from meshgate.services.kong_sync import KongSync

        kong_sync = KongSync(settings.kong, services, registry)

    started = asyncio.Event()
    survivors = FrozenSurvivors()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("starting %d MCP servers", len(supervisor.pools))
        await registry.start()
        if jwt is not None:
            await jwt.start()  # the issuer's keys, fetched before the first token; never fatal
        await services.start(list(settings.mesh.services))
        await supervisor.start()
        await workers.start()
        await cluster.start()  # announced once its servers are verified
        await runtime_policy.start()  # `/configure/...` changes, over every pool now there
        if consul_api is not None:
            await consul_api.start()
        if kong_sync is not None:
            await kong_sync.start()
        for pool in supervisor.pools.values():
            log.info("%s: %s, %d tools", pool.name, pool.state.value, len(pool.tools))
        # What start-up made (about 130 000 objects: modules, FastAPI's and pydantic's models,
        # OpenTelemetry) lives as long as the process; frozen, the collector no longer walks
        # it in every full collection. Before, under load, each full collection paused the
        # loop for 190-390 ms, several times a minute (bench/bench_proxy.py, concurrency 16).
        # And so is, from now on, what survives a full collection (a registry as it grows).
        survivors.start()
        started.set()
        try:
            yield
        finally:
            started.clear()
            log.info("shutting down: draining %d calls in flight", router.in_flight)
            await cluster.stop()  # peers stop sending calls here first
            if consul_api is not None:
                await consul_api.stop()
            if kong_sync is not None:
                await kong_sync.stop()
            await router.drain(settings.mesh.shutdown_grace_s)
            await survivors.stop()
            await workers.stop()
            await runtime_policy.stop()
            await mcp_http.close()
            await instance_relay.close()
            await supervisor.stop()
            await services.stop()
            services.store.close()
            await registry.stop()
            registry.close()
            if jwt is not None:
                await jwt.close()
            await keys.close()
            await router.gate.close()
            tracing.shutdown()
            log.info("stopped")

    app = FastAPI(
        title="meshgate",
        version=__version__,
        description="A service mesh for MCP servers and the HTTP services around them.",
        lifespan=lifespan,
        # The gateway traces and measures its requests itself (observability/); the
        # framework's own telemetry would look its providers up on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.router = router
    app.state.settings = settings
    app.state.keys = keys

    # Called when the server stops accepting, before it waits for open responses: streams that
    # never end by themselves (GET streams, subscriptions) end here so shutdown is not held up.
    def before_shutdown() -> None:
        mcp_http.end_standing_streams()
        if consul_api is not None:  # blocked Consul queries answer now, not after their wait
            consul_api.release()

    app.state.before_shutdown = before_shutdown
    problems.install(app)
    openapi.install(
        app, auth_enabled=authenticator.enabled, public_paths=auth.public_paths if auth else ()
    )
    views = MeshViews(router, registry, services, settings.node_id)
    limits = {
        "max_body_bytes": settings.mesh.max_body_bytes,
        "max_json_depth": settings.mesh.max_json_depth,
    }
    # First of the API's routers: the REST tool call is its busiest route.
    app.include_router(mcp_rest.build(router, **limits))
    app.include_router(
        mesh.build(
            views,
            max_hops=settings.mesh.max_hops,
            trusted_proxies=settings.mesh.trusted_proxies,
            relay=instance_relay,
            **limits,
        )
    )
    app.include_router(
        mesh_status.build(
            views,
            queue_status=workers.status,
            runtime_policy=lambda: dict(runtime_policy.values),
            kong_sync=kong_sync.view if kong_sync is not None else None,
        )
    )
    # The paths of the older mesh API (its body shapes are told apart on the shared ones).
    app.include_router(
        mesh_compat.build(
            views,
            workers,
            runtime_policy,
            topics=settings.tasks,
            max_hops=settings.mesh.max_hops,
            relay=instance_relay,
            **limits,
        )
    )
    app.include_router(tasks.build(router, workers, topics=settings.tasks, **limits))
    app.include_router(api_keys.build(keys, require=operation_check("keys")))
    app.include_router(
        build_metadata(
            enabled=authenticator.enabled,
            resource=auth.resource if auth else None,
            authorization_servers=auth.authorization_servers
            or ((auth.jwt.issuer,) if auth.jwt else ())
            if auth
            else (),
            scopes=auth.scopes_supported if auth else (),
        )
    )
    app.include_router(
        observability.build(
            router,
            registry_status=registry.status,
            queue_status=workers.status,
            sessions=lambda: len(mcp_http.sessions.sessions),
            started=started.is_set,
        )
    )
    edge = settings.edge
    side: FastAPI | None = None  # the edge's own port, when it has one
    main_route: EdgeRoute | None = None  # the table on the main port, when it is served there
    if edge.enabled:
        table = RouteTable(edge.routes)
        proxy = HttpProxy(
            router,
            services,
            max_body_bytes=settings.mesh.max_body_bytes,
            max_hops=settings.mesh.max_hops,
            trusted_proxies=settings.mesh.trusted_proxies,
        )
        if edge.edge.port is not None:
            side = edge_app(EdgeRoute(table, proxy, everything=True))
            _outer_layers(side, settings, authenticator)
        if edge.edge.on_main_port:
            main_route = EdgeRoute(table, proxy, everything=False)
    if settings.mesh.dashboard:
        app.router.routes.extend(dashboard.routes())
    # Inside McpEntry: MCP requests never pass it.
    app.add_middleware(ConditionalGet)
    # Innermost of the gateway's layers: the MCP endpoints skip the framework's own (its
    # exception middleware, exit stack and route matching).
    mcp_every, mcp_one = mcp_routes(mcp_http)
    app.add_middleware(McpEntry, mcp=mcp_http, every=mcp_every, one=mcp_one)
    if consul_api is not None:
        app.include_router(consul.build(consul_api))
        if settings.consul.port is not None:
            services.registration.listen_ports.add(settings.consul.port)
            app.add_middleware(consul.OwnPort, port=settings.consul.port)
    _outer_layers(app, settings, authenticator, ui=settings.mesh.dashboard)
    hosts = allowed_hosts(settings.mesh.allowed_hosts, settings.mesh.host)
    suffixes: tuple[str, ...] = ()
    if edge.enabled and edge.edge.on_main_port and hosts is not None:
        exact, suffixes = route_hosts(edge)  # the names the routes answer reach this port
        hosts |= exact
    # Outermost: a request for a Host not served, or a cross-site write, goes no further,
    # and the Host checked is the one the client sent.
    app.add_middleware(
        RequestGuard, hosts=hosts, origins=settings.mesh.allowed_origins, suffixes=suffixes
    )
    if side is not None:  # before every layer of the main port's: the edge port has its own
        app.add_middleware(EdgePort, edge=side, port=edge.edge.port or 0)
    # First: matching a request against every API route before these cost 15 % of the CPU of
    # a tools/call over /mcp at concurrency 16 (py-spy; bench/RESULTS.md, 2026-11-30).
    app.router.routes[:0] = [
        # Answered by McpEntry before routing; here for what routing does around them (a
        # trailing slash redirected).
        mcp_every,
        mcp_one,
        # The HTTP+SSE transport of protocol 2024-11-05, for clients that still use it.
        Route("/sse", mcp_http.legacy_sse, methods=["GET"], include_in_schema=False),
        Route("/sse/{name}", mcp_http.legacy_sse, methods=["GET"], include_in_schema=False),
        Route("/messages", mcp_http.legacy_messages, methods=["POST"], include_in_schema=False),
    ]
    if main_route is not None:  # last: only what no route above claims
        app.router.routes.append(main_route)
    return app


def _outer_layers(
    app: FastAPI, settings: Settings, authenticator: Authenticator, *, ui: bool = False
) -> None:
    """The layers every request passes before its route, innermost first: tracing, the
    principal, the real client behind a trusted proxy. `ui`: the dashboard's files are served
    here (to anyone: they are its sign-in page)."""
    auth = settings.security.auth
    if settings.mesh.tracing:  # off: not even a layer to pass through
        app.add_middleware(tracing.TracingMiddleware)
    # Every request's principal, found once, before any route runs.
    app.add_middleware(
        Authentication,
        authenticator=authenticator,
        public_paths=(*(auth.public_paths if auth else ()), *((dashboard.PATH,) if ui else ())),
        public_prefixes=(dashboard.PREFIX,) if ui else (),
        resource=auth.resource if auth else None,
    )
    if settings.mesh.trusted_proxies:  # outermost: every layer sees the real client
        app.add_middleware(TrustedForwarding, trusted=TrustedProxies(settings.mesh.trusted_proxies))
