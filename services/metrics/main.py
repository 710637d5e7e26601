"""The metrics service: ``create_app(settings)`` builds everything on start, nothing at
import."""

import asyncio
import logging
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.common.access import RegistryAccess
from services.common.body_limits import DEFAULT_BODY_BYTES, registry_token_check
from services.common.logging import configure_logging
from services.common.runtime import DATABASE, ServiceRuntime, service_lifespan
from services.common.web import create_service_app
from services.metrics.page.router import router as page_router
from services.metrics.runs import service
from services.metrics.runs.live import LiveHub
from services.metrics.runs.router import create_run, log_metrics, log_params
from services.metrics.runs.router import router as runs_router
from services.metrics.settings import MetricsSettings
from services.metrics.state import MetricsState

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION = "0.1.0"
# A run's parameters at their most: 1,000 of up to 2,000 characters each.
_PARAMS_BODY_BYTES = 4 << 20
log = logging.getLogger(__name__)


def create_app(
    settings: MetricsSettings | None = None,
    *,
    registry_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The metrics service; ``registry_transport`` reaches an in-process registry (tests, the
    all-in-one platform) instead of ``settings.registry_url`` over the network."""
    settings = settings or MetricsSettings()

    def declare(runtime: ServiceRuntime) -> MetricsState:
        configure_logging("metrics", settings.log_format, settings.log_level)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        database = runtime.database(settings.sqlalchemy_url(), migrations=MIGRATIONS)
        access = RegistryAccess(
            settings.registry_url, cache_s=settings.auth_cache_s, transport=registry_transport
        )
        # The access checker is also read by the shared token and project checks.
        app.state.access = access
        runtime.closing("registry-access", access.close)

        async def watch_quiet_runs() -> None:
            # A failing pass (the database away) crashes the worker: the runtime logs it,
            # names it in /readyz and starts it again with backoff.
            while True:
                await asyncio.sleep(min(60.0, settings.crashed_after_s / 4))
                async with database.sessions() as session:
                    crashed = await service.mark_quiet_runs_crashed(
                        session, settings.crashed_after_s
                    )
                if crashed:
                    log.info("%d quiet runs marked crashed", crashed)

        runtime.worker("quiet-runs", watch_quiet_runs, needs=[DATABASE])
        return MetricsState(settings=settings, database=database, access=access, live=LiveHub())

    app = create_service_app(
        service="metrics",
        version=VERSION,
        description="Training runs: hyperparameters and metrics per step, compared live.",
        lifespan=service_lifespan("metrics", declare),
        max_request_bytes=DEFAULT_BODY_BYTES,
        route_body_bytes={
            create_run: _PARAMS_BODY_BYTES,
            log_params: _PARAMS_BODY_BYTES,
            log_metrics: settings.max_request_bytes,  # a batch of up to 100,000 points
        },
        token_check=registry_token_check,
    )
    app.include_router(page_router)  # before the runs: /dashboard is not a run id
    app.include_router(runs_router)
    return app
