"""The file store app: ``create_app(settings)`` builds everything on start, nothing at import."""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
import httpx
from fastapi import FastAPI

from services.common.access import RegistryAccess
from services.common.body_limits import registry_token_check
from services.common.database import create_engine, session_factory
from services.common.logging import configure_logging
from services.common.migrations import upgrade
from services.common.web import add_database_check, add_readiness_check, create_service_app
from services.filestore.blobs.local import LocalBlobs
from services.filestore.blobs.s3 import S3Blobs
from services.filestore.blobs.store import BlobStore
from services.filestore.files.router import link, upload
from services.filestore.files.router import router as files_router
from services.filestore.memory import return_large_buffers
from services.filestore.settings import FilestoreSettings
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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("filestore", settings.log_format, settings.log_level)
        return_large_buffers()
        (settings.data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.sqlalchemy_url())
        await upgrade(engine, MIGRATIONS)
        blobs = _blobs_for(settings)
        await anyio.to_thread.run_sync(blobs.ready)
        access = RegistryAccess(
            settings.registry_url, cache_s=settings.auth_cache_s, transport=registry_transport
        )
        app.state.settings = settings
        app.state.sessions = session_factory(engine)
        app.state.blobs = blobs
        app.state.access = access

        add_database_check(app, engine)
        add_readiness_check(app, "blobs", lambda: anyio.to_thread.run_sync(blobs.ready))
        try:
            yield
        finally:
            await access.close()
            await engine.dispose()

    app = create_service_app(
        service="filestore",
        version=VERSION,
        description="Model files by project, model and version, stored by content.",
        lifespan=lifespan,
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


def _blobs_for(settings: FilestoreSettings) -> BlobStore:
    if settings.storage == "s3":
        return S3Blobs.from_settings(settings)
    return LocalBlobs(settings.data_dir.resolve() / "blobs")
