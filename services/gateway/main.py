"""The gateway app: ``create_app(settings)`` builds everything on start, nothing at import.

Start-up: logging, the pooled HTTP clients (one for model replicas, one per platform
service), the routing table filled from the registry, then the events that keep it current.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modelcloud_proto.events import Envelope
from services.common.access import RegistryAccess
from services.common.events.bus import EventBus
from services.common.events.choice import bus_for
from services.common.logging import configure_logging
from services.common.web import OPENAPI_URL, create_service_app
from services.gateway import probes, tables
from services.gateway.calls import CallMetrics
from services.gateway.calls import routes as call_routes
from services.gateway.front_door import router as front_door_router
from services.gateway.hosts import HostCheck
from services.gateway.openapi import PlatformDocument
from services.gateway.routing import RoutingTable
from services.gateway.settings import GatewaySettings

VERSION = "0.1.0"
# The front door streams uploads (model files, code bundles) of any size to the services,
# which apply their own limits; model calls have theirs (GATEWAY_MAX_REQUEST_BYTES).
_STREAMED_LIMIT = 1 << 40


def create_app(
    settings: GatewaySettings | None = None,
    *,
    bus: EventBus | None = None,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
) -> FastAPI:
    """The gateway; ``bus`` overrides the one the settings choose, ``transports`` reach
    in-process services (``registry``, ``builder``, ``filestore``) instead of their URLs."""
    settings = settings or GatewaySettings()
    reach = dict(transports or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("gateway", settings.log_format, settings.log_level)
        urls = {
            "registry": settings.registry_url,
            "builder": settings.builder_url,
            "filestore": settings.filestore_url,
            "metrics": settings.metrics_url,
        }
        upstreams = {
            # No read timeout: live build logs stream for as long as the build runs.
            name: httpx.AsyncClient(
                base_url=url, transport=reach.get(name), timeout=httpx.Timeout(None, connect=10)
            )
            for name, url in urls.items()
        }
        # Model calls take aiohttp: its pool and parser cost a fraction of httpx's per call
        # (bench/gateway.py), and a model call is the gateway's hot path. Bodies pass as
        # they are: no decompression, no headers of its own beyond those HTTP requires.
        replicas = aiohttp.ClientSession(
            # Idle connections are let go before a replica's server drops them (uvicorn's
            # keep-alive is 5 s), so a call never goes out on one the replica is closing.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        replica_key = settings.replica_key
        table = RoutingTable(
            max_outstanding=settings.max_outstanding,
            eject_s=settings.eject_s,
            replica_key=None if replica_key is None else replica_key.get_secret_value(),
        )
        access = RegistryAccess(
            settings.registry_url, cache_s=settings.auth_cache_s, transport=reach.get("registry")
        )
        event_bus = bus or bus_for(settings)
        await event_bus.start()

        async def handle(envelope: Envelope) -> None:
            tables.apply(table, envelope)

        # Subscribe first, then read the registry: an event in between is applied twice at
        # worst, which changes nothing.
        await event_bus.subscribe(tables.QUEUE, tables.PATTERNS, handle)
        if settings.registry_token is not None:
            token = settings.registry_token.get_secret_value()
            async with httpx.AsyncClient(
                base_url=settings.registry_url,
                transport=reach.get("registry"),
                headers={"Authorization": f"Bearer {token}"},
            ) as registry:
                await tables.load_from_registry(table, registry)
        app.state.settings = settings
        app.state.routes = table
        app.state.access = access
        app.state.upstreams = upstreams
        app.state.platform_document = PlatformDocument(upstreams)
        app.state.replicas = replicas
        app.state.call_metrics = CallMetrics(app.state.metrics_registry)
        prober = asyncio.create_task(
            probes.probe_ejected(table, replicas, settings.probe_interval_s)
        )
        try:
            yield
        finally:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
            if bus is None:
                await event_bus.close()
            else:
                await event_bus.unsubscribe(tables.QUEUE)
            await replicas.close()
            for client in upstreams.values():
                await client.aclose()
            await access.close()

    app = create_service_app(
        service="gateway",
        version=VERSION,
        description="The platform's front door and the versioned URLs of published models.",
        lifespan=lifespan,
        max_request_bytes=_STREAMED_LIMIT,
        serve_openapi=False,  # the platform's document, below, with the gateway's own in it
    )

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def platform_openapi(request: Request) -> JSONResponse:
        document: PlatformDocument = request.app.state.platform_document
        return JSONResponse(await document.get(app.openapi()))

    app.router.routes.extend(call_routes)
    app.include_router(front_door_router)
    app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)
    return app
