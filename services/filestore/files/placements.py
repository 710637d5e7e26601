"""Where blobs lie when not under their content address (see ``blobs/store.py``)."""

from collections.abc import Iterator

import anyio.to_thread
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.filestore.blobs.store import BlobStore, Placement
from services.filestore.files.models import BlobPlacement


async def locate(session: AsyncSession, digests: set[str]) -> dict[str, Placement]:
    """The placement of each of ``digests`` that has one (the others lie at their address)."""
    if not digests:
        return {}
    query = select(BlobPlacement).where(col(BlobPlacement.sha256).in_(digests))
    return {
        row.sha256: Placement(row.key, row.offset, row.size)
        for row in (await session.exec(query)).all()
    }


def place(session: AsyncSession, sha256: str, placement: Placement) -> None:
    """Record where a blob lies; committed with the file entries that point at it."""
    session.add(
        BlobPlacement(
            sha256=sha256, key=placement.key, offset=placement.offset, size=placement.size
        )
    )


async def is_stored(session: AsyncSession, blobs: BlobStore, sha256: str) -> bool:
    if await locate(session, {sha256}):
        return True
    return await anyio.to_thread.run_sync(blobs.exists, sha256)


async def read_blob(session: AsyncSession, blobs: BlobStore, sha256: str) -> Iterator[bytes]:
    placement = (await locate(session, {sha256})).get(sha256)
    return blobs.read(sha256) if placement is None else blobs.read_placed(placement)
