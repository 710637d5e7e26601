"""The builder app: ``create_app(settings)`` builds everything on start, nothing at import.

Its parts (``services/common/runtime``): the database and its migrations, the event bus, the
supervisor (which reconciles running replicas first), the consumer of the registry's
requests, the outbox relay and the build runner; stopped in reverse order.
"""

import contextlib
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
from services.builder.state import BuilderState
from services.common.access import RegistryAccess
from services.common.body_limits import registry_token_check
from services.common.events.bus import BusUnavailable, EventBus
from services.common.events.choice import bus_for
from services.common.events.consumer import idempotent
from services.common.events.outbox import OutboxRelay
from services.common.logging import configure_logging
from services.common.runtime import DATABASE, EVENT_BUS, ServiceRuntime, service_lifespan
from services.common.web import create_service_app

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

    def declare(runtime: ServiceRuntime) -> BuilderState:
        configure_logging("builder", settings.log_format, settings.log_level)
        root = settings.data_dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
        database = runtime.database(settings.sqlalchemy_url(), migrations=MIGRATIONS)
        event_bus = bus or bus_for(settings)
        relay = OutboxRelay(
            database.sessions,
            event_bus,
            poll_interval_s=settings.outbox_poll_interval_s,
            metrics=app.state.metrics_registry,  # parked events and failures on /metrics
        )
        token = settings.registry_token.get_secret_value() if settings.registry_token else None
        bundles = BundleSource(settings.registry_url, token, transport=registry_transport)
        access = RegistryAccess(
            settings.registry_url, cache_s=settings.auth_cache_s, transport=registry_transport
        )
        # The access checker is also read by the shared token check (body_limits.py).
        app.state.access = access
        logs = BuildLogs(root / "build-logs")
        runner = BuildRunner(
            sessions=database.sessions,
            backend=_backend_for(settings, root),
            bundles=bundles,
            logs=logs,
            relay=relay,
            scratch=root / "scratch",
        )
        supervisor = Supervisor(
            sessions=database.sessions,
            runtime=_runtime_for(settings, settings.replica_owner()),
            settings=settings,
            relay=relay,
            logs=root / "replica-logs",
        )
        runtime.closing("bundle-source", bundles.close)
        runtime.closing("registry-access", access.close)
        runtime.event_bus(event_bus, shared=bus is not None)

        async def publish_last() -> None:
            # What the supervisor staged last (a stopped deployment) still goes out.
            with contextlib.suppress(BusUnavailable):
                await relay.publish_pending()

        runtime.step("last-events", stop=publish_last, needs=[DATABASE, EVENT_BUS])
        # Reconciles the replicas found running before any request to change them comes in;
        # once up, /readyz names it while a deployment's watch keeps failing.
        runtime.step(
            "supervisor",
            supervisor.start,
            stop=supervisor.close,
            needs=[DATABASE],
            retry=True,
            live=supervisor.check,
        )
        consumer = consumers.BuilderConsumer(runner, supervisor)
        runtime.subscription(
            consumers.QUEUE,
            consumers.PATTERNS,
            idempotent(consumers.QUEUE, database.sessions, consumer.apply),
            max_deliveries=settings.max_deliveries,
            needs=["supervisor"],
        )
        runtime.worker("outbox-relay", relay.run, needs=[DATABASE])
        runtime.worker("build-runner", runner.run, needs=[DATABASE])
        return BuilderState(
            settings=settings,
            database=database,
            access=access,
            build_logs=logs,
            supervisor=supervisor,
        )

    app = create_service_app(
        service="builder",
        version=VERSION,
        description="Builds code bundles into environments and runs their replicas.",
        lifespan=service_lifespan("builder", declare),
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
