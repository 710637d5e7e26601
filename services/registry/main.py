"""The registry app: ``create_app(settings)`` builds everything on start, nothing at import.

Start-up: logging, database engine, migrations, bundle store, event bus, outbox relay, the
consumer of the builder's events. Shut-down undoes it in reverse order.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import HTTPConnection

from services.common.database import create_engine, session_factory
from services.common.events.bus import EventBus
from services.common.events.choice import bus_for
from services.common.events.consumer import idempotent
from services.common.events.outbox import OutboxRelay
from services.common.logging import configure_logging
from services.common.migrations import upgrade
from services.common.web import add_database_check, create_service_app
from services.registry import consumers
from services.registry.accounts.router import router as accounts_router
from services.registry.accounts.service import authenticate
from services.registry.bundles.store import BundleStore
from services.registry.model_services.router import router as services_router
from services.registry.projects.router import router as projects_router
from services.registry.settings import RegistrySettings
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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("registry", settings.log_format, settings.log_level)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.sqlalchemy_url())
        await upgrade(engine, MIGRATIONS)
        sessions = session_factory(engine)
        event_bus = bus or bus_for(settings)
        await event_bus.start()
        relay = OutboxRelay(sessions, event_bus, poll_interval_s=settings.outbox_poll_interval_s)
        app.state.settings = settings
        app.state.sessions = sessions
        app.state.relay = relay
        app.state.bundles = BundleStore(settings.data_dir.resolve() / "bundles")
        await event_bus.subscribe(
            consumers.QUEUE,
            consumers.PATTERNS,
            idempotent(consumers.QUEUE, sessions, consumers.apply),
            max_deliveries=settings.max_deliveries,
        )

        add_database_check(app, engine)
        relay_task = asyncio.create_task(relay.run(), name="registry-outbox-relay")
        try:
            yield
        finally:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
            if bus is None:
                await event_bus.close()
            else:  # a shared bus goes on without this service
                await event_bus.unsubscribe(consumers.QUEUE)
            await engine.dispose()

    app = create_service_app(
        service="registry",
        version=VERSION,
        description="Projects, service groups, model services, versions and their lifecycle.",
        lifespan=lifespan,
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
    async with connection.app.state.sessions() as session:
        await authenticate(session=session, authorization=connection.headers.get("authorization"))
