"""The gateway app: ``create_app(settings)`` builds everything on start, nothing at import.

Its parts (``services/common/runtime``): the pooled HTTP clients (one for model replicas,
one per platform service), the event bus and the events that keep the routing table current,
the table filled from the registry, the probe of ejected replicas.
"""

from collections.abc import Mapping

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modelcloud_proto.events import Envelope
from services.common.access import RegistryAccess
from services.common.events.bus import EventBus
from services.common.events.choice import bus_for
from services.common.logging import configure_logging
from services.common.runtime import ServiceRuntime, service_lifespan
from services.common.web import OPENAPI_URL, create_service_app
from services.gateway import probes, tables
from services.gateway.calls import CallMetrics
from services.gateway.calls import routes as call_routes
from services.gateway.front_door import router as front_door_router
from services.gateway.hosts import HostCheck
from services.gateway.openapi import PlatformDocument
from services.gateway.routing import RoutingTable
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState, gateway_state

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

    def declare(runtime: ServiceRuntime) -> GatewayState:
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
        for name, client in upstreams.items():
            runtime.closing(f"{name}-client", client.aclose)
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
        runtime.closing("replica-client", replicas.close)
        replica_key = settings.replica_key
        table = RoutingTable(
            max_outstanding=settings.max_outstanding,
            eject_s=settings.eject_s,
            replica_key=None if replica_key is None else replica_key.get_secret_value(),
        )
        access = RegistryAccess(
            settings.registry_url, cache_s=settings.auth_cache_s, transport=reach.get("registry")
        )
        # The access checker is also read by the shared project check.
        app.state.access = access
        runtime.closing("registry-access", access.close)
        event_bus = bus or bus_for(settings)
        runtime.event_bus(event_bus, shared=bus is not None)

        async def handle(envelope: Envelope) -> None:
            tables.apply(table, envelope)

        # Subscribe first, then read the registry: an event in between is applied twice at
        # worst, which changes nothing.
        consumer = runtime.subscription(tables.QUEUE, tables.PATTERNS, handle)
        registry_token = settings.registry_token
        if registry_token is not None:

            async def load_routes() -> None:
                async with httpx.AsyncClient(
                    base_url=settings.registry_url,
                    transport=reach.get("registry"),
                    headers={"Authorization": f"Bearer {registry_token.get_secret_value()}"},
                ) as registry:
                    await tables.load_from_registry(table, registry)

            # Retried while the registry is away: /readyz names it until the table is filled.
            runtime.step("routing-table", load_routes, needs=[consumer.name], retry=True)
        runtime.worker(
            "replica-probe",
            lambda: probes.probe_ejected(table, replicas, settings.probe_interval_s),
        )
        return GatewayState(
            settings=settings,
            routes=table,
            access=access,
            upstreams=upstreams,
            platform_document=PlatformDocument(upstreams),
            replicas=replicas,
            call_metrics=CallMetrics(app.state.metrics_registry),
        )

    app = create_service_app(
        service="gateway",
        version=VERSION,
        description="The platform's front door and the versioned URLs of published models.",
        lifespan=service_lifespan("gateway", declare),
        max_request_bytes=_STREAMED_LIMIT,
        serve_openapi=False,  # the platform's document, below, with the gateway's own in it
    )

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def platform_openapi(request: Request) -> JSONResponse:
        document = gateway_state(request).platform_document
        return JSONResponse(await document.get(app.openapi()))

    app.router.routes.extend(call_routes)
    app.include_router(front_door_router)
    app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)
    return app
