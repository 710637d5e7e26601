"""Where an entry's bytes lie when not under their content address (see ``blobs/store.py``).

Content addressing never lets a digest stand for bytes nobody has shown: the placements
recorded here, and the blobs under their content address, hold only bytes whose SHA-256
the file store computed itself, so any copy serves any project that proved it holds the
content. A direct upload's SHA-256 is the uploader's claim (the file store never reads
those bytes): its object is named by the entries it made, in its own project, and is
never read for any other entry or counted as stored content.

Proving the content is no right to the rest of the object it lies in: a pack holds its
project's other files. Reads through the file store take the blob's range; a presigned
URL, which binds no range, covers a whole object, so it goes only to a project that may
read every byte of it (``blobs/s3.py``'s ``readable_whole``).
"""

from collections.abc import Iterator

import anyio.to_thread
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.filestore.blobs.s3 import readable_whole
from services.filestore.blobs.store import BlobStore, Placement, blob_key
from services.filestore.files.models import BlobPlacement, FileEntry


async def locate(
    session: AsyncSession, digests: set[str], project: str | None = None
) -> dict[str, Placement]:
    """The placement of each of ``digests`` that has one (the others lie at their address);
    with ``project``, one whose object that project may be handed whole where there is one
    (the same content may lie in several packs)."""
    if not digests:
        return {}
    query = select(BlobPlacement).where(col(BlobPlacement.sha256).in_(digests))
    found: dict[str, Placement] = {}
    for row in (await session.exec(query)).all():
        placement = Placement(row.key, row.offset, row.size)
        if row.sha256 not in found or (project and presignable(placement, project)):
            found[row.sha256] = placement
    return found


def presignable(placement: Placement, project: str) -> bool:
    """Whether a presigned URL of the placement's object may go to a reader of ``project``:
    only if every byte of the object is one that project may read."""
    return readable_whole(placement.key, placement.offset, project)


def place(session: AsyncSession, sha256: str, placement: Placement) -> None:
    """Record where content the file store has verified lies; committed with the file
    entries that point at it. Never for a direct upload: its digest is only claimed."""
    session.add(
        BlobPlacement(
            sha256=sha256, key=placement.key, offset=placement.offset, size=placement.size
        )
    )


async def is_stored(session: AsyncSession, blobs: BlobStore, sha256: str) -> bool:
    """Whether verified content is kept for ``sha256``. This says nothing about who may read
    it: a project gets to point at it only by sending the bytes (checked) or by linking to
    content it holds itself."""
    if await locate(session, {sha256}):
        return True
    return await anyio.to_thread.run_sync(blobs.exists, sha256)


async def placements_of(
    session: AsyncSession, entries: list[FileEntry], project: str | None = None
) -> list[Placement | None]:
    """Where each entry's bytes lie: its own direct upload's object, a placement of verified
    content (with ``project``, one it may be handed whole where there is one), or None
    (under the content address)."""
    digests = {e.sha256 for e in entries if e.object_key is None}
    verified = await locate(session, digests, project)
    return [
        Placement(e.object_key, 0, e.size) if e.object_key is not None else verified.get(e.sha256)
        for e in entries
    ]


async def read_entry(
    session: AsyncSession,
    blobs: BlobStore,
    entry: FileEntry,
    first: int = 0,
    length: int | None = None,
) -> Iterator[bytes]:
    """The entry's bytes, or ``length`` of them from ``first``."""
    (placement,) = await placements_of(session, [entry])
    if first == 0 and length is None:
        return blobs.read(entry.sha256) if placement is None else blobs.read_placed(placement)
    base = Placement(blob_key(entry.sha256), 0, entry.size) if placement is None else placement
    length = entry.size - first if length is None else length
    return blobs.read_placed(Placement(base.key, base.offset + first, length))
