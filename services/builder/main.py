"""The builder app: ``create_app(settings)`` builds everything on start, nothing at import.

Start-up: logging, database and migrations, the event bus and outbox relay, the build
runner, the supervisor (which reconciles running replicas first), then the consumer of the
registry's requests. Shut-down undoes it in reverse order.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.builder import consumers
from services.builder.backends.base import BuildBackend, Runtime
from services.builder.backends.venv import ProcessRuntime, VenvBuilder
from services.builder.builds.logs import BuildLogs
from services.builder.builds.router import router as builds_router
from services.builder.builds.service import BuildRunner
from services.builder.bundles import BundleSource
from services.builder.deployments.router import router as deployments_router
from services.builder.deployments.supervisor import Supervisor
from services.builder.settings import BuilderSettings
from services.common.access import RegistryAccess
from services.common.body_limits import registry_token_check
from services.common.database import create_engine, session_factory
from services.common.events.bus import EventBus
from services.common.events.choice import bus_for
from services.common.events.consumer import idempotent
from services.common.events.outbox import OutboxRelay
from services.common.logging import configure_logging
from services.common.migrations import upgrade
from services.common.web import add_database_check, create_service_app

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION = "0.1.0"


def create_app(
    settings: BuilderSettings | None = None,
    *,
    bus: EventBus | None = None,
    registry_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The builder; ``bus`` overrides the one the settings choose (the all-in-one platform
    shares one bus), ``registry_transport`` reaches an in-process registry."""
    settings = settings or BuilderSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("builder", settings.log_format, settings.log_level)
        root = settings.data_dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.sqlalchemy_url())
        await upgrade(engine, MIGRATIONS)
        sessions = session_factory(engine)
        event_bus = bus or bus_for(settings)
        await event_bus.start()
        relay = OutboxRelay(sessions, event_bus, poll_interval_s=settings.outbox_poll_interval_s)
        token = settings.registry_token.get_secret_value() if settings.registry_token else None
        bundles = BundleSource(settings.registry_url, token, transport=registry_transport)
        access = RegistryAccess(
            settings.registry_url, cache_s=settings.auth_cache_s, transport=registry_transport
        )
        logs = BuildLogs(root / "build-logs")
        runner = BuildRunner(
            sessions=sessions,
            backend=_backend_for(settings, root),
            bundles=bundles,
            logs=logs,
            relay=relay,
            scratch=root / "scratch",
        )
        owner = settings.replica_owner()
        supervisor = Supervisor(
            sessions=sessions,
            runtime=_runtime_for(settings, owner),
            settings=settings,
            relay=relay,
            logs=root / "replica-logs",
        )
        app.state.settings = settings
        app.state.sessions = sessions
        app.state.access = access
        app.state.build_logs = logs
        app.state.supervisor = supervisor
        await supervisor.start()
        consumer = consumers.BuilderConsumer(runner, supervisor)
        await event_bus.subscribe(
            consumers.QUEUE,
            consumers.PATTERNS,
            idempotent(consumers.QUEUE, sessions, consumer.apply),
            max_deliveries=settings.max_deliveries,
        )

        add_database_check(app, engine)
        tasks = [
            asyncio.create_task(relay.run(), name="builder-outbox-relay"),
            asyncio.create_task(runner.run(), name="builder-runner"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await supervisor.close()
            # What the supervisor staged last (a stopped deployment) still goes out.
            with contextlib.suppress(Exception):
                await relay.publish_pending()
            if bus is None:
                await event_bus.close()
            else:  # a shared bus goes on without this service
                await event_bus.unsubscribe(consumers.QUEUE)
            await bundles.close()
            await access.close()
            await engine.dispose()

    app = create_service_app(
        service="builder",
        version=VERSION,
        description="Builds code bundles into environments and runs their replicas.",
        lifespan=lifespan,
        max_request_bytes=settings.max_request_bytes,
        token_check=registry_token_check,
    )
    app.include_router(builds_router)
    app.include_router(deployments_router)
    return app


def _backend_for(settings: BuilderSettings, root: Path) -> BuildBackend:
    if settings.backend == "docker":
        from services.builder.backends.docker import DockerBuilder

        return DockerBuilder(settings)
    return VenvBuilder(settings, root)


def _runtime_for(settings: BuilderSettings, owner: str) -> Runtime:
    if settings.backend == "docker":
        from services.builder.backends.docker import ContainerRuntime

        return ContainerRuntime(owner, settings)
    return ProcessRuntime(owner, settings)
