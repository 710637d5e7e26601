"""The registry app: ``create_app(settings)`` builds everything on start, nothing at import.

Its parts (``services/common/runtime``): the database and its migrations, the event bus, the
consumer of the builder's events, the outbox relay; started in that order, stopped in reverse.
"""

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import HTTPConnection

from services.common.events.bus import EventBus
from services.common.events.choice import bus_for
from services.common.events.consumer import idempotent
from services.common.events.outbox import OutboxRelay
from services.common.logging import configure_logging
from services.common.runtime import DATABASE, ServiceRuntime, service_lifespan, service_state
from services.common.web import create_service_app
from services.registry import consumers
from services.registry.accounts.router import router as accounts_router
from services.registry.accounts.service import authenticate
from services.registry.bundles.store import BundleStore
from services.registry.model_services.router import router as services_router
from services.registry.projects.router import router as projects_router
from services.registry.settings import RegistrySettings
from services.registry.state import RegistryState
from services.registry.versions.router import register_version
from services.registry.versions.router import router as versions_router

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION = "0.1.0"
# What a bundle's multipart body carries beside the bundle itself (its boundaries, headers
# and the version field).
_FORM_OVERHEAD_BYTES = 64 << 10


def create_app(settings: RegistrySettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    """The registry; ``bus`` overrides the one the settings choose (the all-in-one platform
    shares one bus between services)."""
    settings = settings or RegistrySettings()

    def declare(runtime: ServiceRuntime) -> RegistryState:
        configure_logging("registry", settings.log_format, settings.log_level)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        database = runtime.database(settings.sqlalchemy_url(), migrations=MIGRATIONS)
        event_bus = bus or bus_for(settings)
        relay = OutboxRelay(
            database.sessions,
            event_bus,
            poll_interval_s=settings.outbox_poll_interval_s,
            metrics=app.state.metrics_registry,  # parked events and failures on /metrics
        )
        runtime.event_bus(event_bus, shared=bus is not None)
        runtime.subscription(
            consumers.QUEUE,
            consumers.PATTERNS,
            idempotent(consumers.QUEUE, database.sessions, consumers.apply),
            max_deliveries=settings.max_deliveries,
        )
        # The relay waits for the bus itself (with backoff), so it needs only the database.
        runtime.worker("outbox-relay", relay.run, needs=[DATABASE])
        return RegistryState(
            settings=settings,
            database=database,
            relay=relay,
            bundles=BundleStore(settings.data_dir.resolve() / "bundles"),
        )

    app = create_service_app(
        service="registry",
        version=VERSION,
        description="Projects, service groups, model services, versions and their lifecycle.",
        lifespan=service_lifespan("registry", declare),
        max_request_bytes=settings.max_request_bytes,
        route_body_bytes={register_version: settings.max_bundle_bytes + _FORM_OVERHEAD_BYTES},
        token_check=_known_token,
    )
    for router in (accounts_router, projects_router, services_router, versions_router):
        app.include_router(router)
    return app


async def _known_token(connection: HTTPConnection) -> None:
    """A bundle past the default body limit is read only for a valid token: FastAPI reads
    the form before the route's own token check runs."""
    state = service_state(connection.app, RegistryState)
    async with state.database.session() as session:
        await authenticate(session=session, authorization=connection.headers.get("authorization"))
