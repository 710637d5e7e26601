"""The file store app: ``create_app(settings)`` builds everything on start, nothing at import.

Its parts (``services/common/runtime``): the database and its migrations, the blob store
(checked reachable), the registry client; stopped in reverse order."""

from functools import partial
from pathlib import Path

import anyio.to_thread
import httpx
from fastapi import FastAPI

from services.common.access import RegistryAccess
from services.common.body_limits import registry_token_check
from services.common.logging import configure_logging
from services.common.runtime import DATABASE, ServiceRuntime, service_lifespan
from services.common.web import create_service_app
from services.filestore.blobs.choice import blob_store
from services.filestore.blobs.cleanup import clean_abandoned_uploads, scratch_folder
from services.filestore.blobs.collector import BlobCollector, collect_every
from services.filestore.files.router import link, upload
from services.filestore.files.router import router as files_router
from services.filestore.memory import return_large_buffers
from services.filestore.settings import FilestoreSettings
from services.filestore.state import FilestoreState
from services.filestore.transfers.router import complete_upload, download_links, store_pack
from services.filestore.transfers.router import router as transfers_router

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION = "0.1.0"
# A link, download or completion request of its most items (10,000 paths of up to 1 KiB).
_LIST_BODY_BYTES = 16 << 20


def create_app(
    settings: FilestoreSettings | None = None,
    *,
    registry_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The file store; ``registry_transport`` reaches an in-process registry (tests, the
    all-in-one platform) instead of ``settings.registry_url`` over the network."""
    settings = settings or FilestoreSettings()

    def declare(runtime: ServiceRuntime) -> FilestoreState:
        configure_logging("filestore", settings.log_format, settings.log_level)
        return_large_buffers()
        scratch_folder(settings).mkdir(parents=True, exist_ok=True)
        database = runtime.database(settings.sqlalchemy_url(), migrations=MIGRATIONS)
        blobs = blob_store(settings)
        access = RegistryAccess(
            settings.registry_url, cache_s=settings.auth_cache_s, transport=registry_transport
        )
        # The access checker is also read by the shared token and project checks.
        app.state.access = access
        runtime.closing("registry-access", access.close)

        async def blobs_ready() -> None:
            await anyio.to_thread.run_sync(blobs.ready)

        # Retried like the database: a bucket that is away at start is waited for.
        runtime.step("blobs", blobs_ready, retry=True, live=blobs_ready)
        # What uploads cut short by a crash left behind (older than the longest upload).
        runtime.step(
            "abandoned-uploads",
            partial(clean_abandoned_uploads, settings=settings, blobs=blobs),
            needs=["blobs"],
            retry=True,
        )
        if settings.gc_interval_s > 0:
            collector = BlobCollector(
                sessions=database.sessions,
                blobs=blobs,
                grace_s=settings.gc_grace_s,
                metrics=app.state.metrics_registry,
            )
            runtime.worker(
                "blob-collector",
                partial(collect_every, collector, settings.gc_interval_s),
                needs=[DATABASE, "blobs"],
            )
        return FilestoreState(settings=settings, database=database, blobs=blobs, access=access)

    app = create_service_app(
        service="filestore",
        version=VERSION,
        description="Model files by project, model and version, stored by content.",
        lifespan=service_lifespan("filestore", declare),
        max_request_bytes=settings.max_request_bytes,
        route_body_bytes={
            upload: settings.max_file_bytes,  # streamed to the blob store as it arrives
            store_pack: settings.pack_max_bytes,  # likewise, to a scratch file
            link: _LIST_BODY_BYTES,
            download_links: _LIST_BODY_BYTES,
            complete_upload: _LIST_BODY_BYTES,
        },
        token_check=registry_token_check,
    )
    app.include_router(files_router)
    app.include_router(transfers_router)
    return app
