"""Storing, linking, listing, reading and deleting model files.

An upload streams into the blob store while its SHA-256 is computed (memory stays flat);
the blob becomes readable, and the path is recorded, only once the digest the client
declared has been checked: a mismatch, a truncated body or an oversize one commits nothing.
A client that has not read a large file yet may send its digest after it instead (a
*trailer*, as S3's own chunked uploads carry checksums after the data): the file is then
hashed once, while it is sent, and the SHA-256 is checked all the same. Without any digest,
the file is recorded under the SHA-256 computed here, which the answer carries. The SHA-256
is also the pipe's ``crc``: one hash per file, the content's own address.
"""

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from pydantic import Field as PydanticField
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.problem import FieldError
from services.common.problems import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from services.filestore.blobs.store import CHUNK, BlobStore, Placement
from services.filestore.files.commit_locks import lock_names
from services.filestore.files.expiry import check_age
from services.filestore.files.models import FileEntry, FileRead, LinkItem, LinkResult
from services.filestore.files.placements import is_stored, place, read_entry
from services.filestore.files.ranges import ByteRange, requested_range

Where = tuple[str, str, str]  # project, model, version
TRAILER_MAX = 1024


class DigestTrailer(BaseModel):
    """What follows a file's bytes in an upload that announced ``X-File-Size``."""

    sha256: str = PydanticField(pattern=r"^[0-9a-f]{64}$")


async def list_models(*, session: AsyncSession, project: str) -> list[str]:
    query = select(FileEntry.model).where(FileEntry.project == project).distinct()
    return sorted((await session.exec(query)).all())


async def list_versions(*, session: AsyncSession, project: str, model: str) -> list[str]:
    query = (
        select(FileEntry.version)
        .where(FileEntry.project == project, FileEntry.model == model)
        .distinct()
    )
    return sorted((await session.exec(query)).all())


async def list_files(*, session: AsyncSession, where: Where) -> list[FileRead]:
    return [to_read(e) for e in await _entries(session, where)]


async def upload(
    *,
    session: AsyncSession,
    blobs: BlobStore,
    where: Where,
    path: str,
    body: AsyncIterator[bytes],
    declared_sha256: str | None,
    declared_size: int | None,
    modified_at: datetime | None,
    user: str,
    max_bytes: int,
    max_age_s: float,
    trailer_after: int | None = None,
) -> FileRead:
    """Stream the body into the blob store while hashing it; the content becomes readable,
    and the path is recorded, only if the digest and size match what was declared, before
    the body or, with ``trailer_after`` (the file's size), in a :class:`DigestTrailer` after
    that many bytes.

    Content stored already (by any project) is not written again, but its bytes are still
    received and hashed: sending them is what proves the uploader holds them. One that
    took over ``max_age_s`` is refused (``files/expiry.py``)."""
    started = time.time()
    known = declared_sha256 is not None and await is_stored(session, blobs, declared_sha256)
    # No transaction stays open while the body travels: on SQLite each one holds the write
    # lock, and every other writer (the blob collector too) would wait for the upload.
    await session.rollback()
    placed_writer = declared_sha256 is None
    writer = (
        None
        if known
        else await anyio.to_thread.run_sync(blobs.writer, declared_sha256, declared_size)
    )
    placed: str | None = None
    sha256 = hashlib.sha256()
    size = 0
    trailer = bytearray()
    batch: list[bytes] = []
    batched = 0
    in_flight: asyncio.Future[None] | None = None

    def consume(chunks: list[bytes]) -> None:  # in a worker thread: hashing 1 MiB takes ms
        for data in chunks:
            sha256.update(data)
            if writer is not None:
                writer.write(data)

    async def hand_over(chunks: list[bytes]) -> None:
        # One batch is hashed and sent while the next one arrives; never two at once.
        nonlocal in_flight
        if in_flight is not None:
            await in_flight
        in_flight = asyncio.ensure_future(anyio.to_thread.run_sync(consume, chunks))

    try:
        async for chunk in _file_part(body, trailer_after, trailer):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"{path} is larger than {max_bytes} bytes")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= CHUNK:
                await hand_over(batch)
                batch, batched = [], 0
        await hand_over(batch)
        if in_flight is not None:
            await in_flight
        expected_size = declared_size if trailer_after is None else trailer_after
        if expected_size is not None and size != expected_size:
            raise InvalidInput("body", f"{path}: received {size} of {expected_size} bytes")
        if trailer_after is not None:
            declared_sha256 = _read_trailer(path, trailer).sha256
        digest = sha256.hexdigest()
        if declared_sha256 is not None and digest != declared_sha256:
            field = "X-Content-SHA256" if trailer_after is None else "trailer.sha256"
            raise InvalidInput(field, f"{path}: the content's SHA-256 is {digest}")
        check_age(started=started, max_age_s=max_age_s, path=path)
        # From here to the commit, the digest is locked against the collector
        # (``files/commit_locks.py``): what the entry will read is checked, or written, first.
        await session.rollback()
        await lock_names(session, [digest])
        if known and not await is_stored(session, blobs, digest):
            # Collected while the bytes travelled (it had no file left): they were not kept.
            raise ServiceUnavailable(f"{path}: its stored copy was removed meanwhile; send again")
        if writer is not None:
            # Bytes streamed before their digest was known lie in an object of their own:
            # content stored meanwhile (or before) is kept once.
            if placed_writer and await is_stored(session, blobs, digest):
                await anyio.to_thread.run_sync(writer.abort)  # stored once is enough
            else:
                placed = await anyio.to_thread.run_sync(writer.commit, digest)
    except BaseException:
        with anyio.CancelScope(shield=True):
            if in_flight is not None:
                with contextlib.suppress(BaseException):
                    await in_flight  # the writer is not touched by two threads at once
            if writer is not None:
                await anyio.to_thread.run_sync(writer.abort)
        raise
    content = Content(digest, size)
    if placed is not None:
        place(session, digest, Placement(placed, 0, size))
    entry = await record(session, where, path, content, modified_at, user)
    await session.commit()
    return to_read(entry)


async def _file_part(
    body: AsyncIterator[bytes], file_size: int | None, trailer: bytearray
) -> AsyncIterator[bytes]:
    """The file's bytes of a body; with ``file_size``, what comes after goes to ``trailer``."""
    received = 0
    async for chunk in body:
        if file_size is None:
            yield chunk
            continue
        room = file_size - received
        if room > 0:
            part = chunk if len(chunk) <= room else chunk[:room]
            received += len(part)
            yield part
            chunk = chunk[len(part) :]
        if chunk:
            trailer.extend(chunk)
            if len(trailer) > TRAILER_MAX:
                raise InvalidInput("body", f"the digest trailer is over {TRAILER_MAX} bytes")


def _read_trailer(path: str, trailer: bytearray) -> DigestTrailer:
    try:
        return DigestTrailer.model_validate_json(bytes(trailer))
    except ValidationError as exc:
        errors = [
            FieldError(field="trailer" + "".join(f".{x}" for x in e["loc"]), message=e["msg"])
            for e in exc.errors()
        ]
        raise InvalidInput(errors=errors) from None


async def link(
    *, session: AsyncSession, where: Where, items: list[LinkItem], user: str
) -> LinkResult:
    """Point paths at content this project already holds: a push of unchanged files sends
    no bytes. Paths already pointing at the same content are left alone."""
    # Content held only by entries deleted meanwhile may be collected: locked, it is not.
    await lock_names(session, {i.sha256 for i in items})
    current = {e.path: e for e in await _entries(session, where)}
    linked: list[str] = []
    missing: list[str] = []
    known = await held(session, where[0], {i.sha256 for i in items})
    pointed: list[tuple[str, Content, datetime | None]] = []
    for item in items:
        existing = current.get(item.path)
        if existing is not None and existing.sha256 == item.sha256:
            linked.append(item.path)
            continue
        content = known.get(item.sha256)  # content is recorded only after its blob is stored
        if content is None:
            missing.append(item.path)
            continue
        pointed.append((item.path, content, item.modified_at))
        linked.append(item.path)
    if pointed:
        await record_many(session, where, pointed, user)
    await session.commit()
    return LinkResult(linked=linked, missing=missing)


async def open_file(
    *,
    session: AsyncSession,
    blobs: BlobStore,
    where: Where,
    path: str,
    byte_range: str | None = None,
) -> tuple[FileRead, Iterator[bytes], ByteRange | None]:
    """The file's bytes, or the range ``byte_range`` (a ``Range`` header) asks for: a pull
    cut half way goes on from where it stopped."""
    entry = await entry_or_404(session, where, path)
    wanted = requested_range(byte_range, entry.size)
    if wanted is None:
        return to_read(entry), await read_entry(session, blobs, entry), None
    chunks = await read_entry(session, blobs, entry, wanted.first, wanted.length)
    return to_read(entry), chunks, wanted


async def delete(*, session: AsyncSession, where: Where, path: str) -> FileRead:
    entry = await entry_or_404(session, where, path)
    await session.delete(entry)
    await session.commit()
    return to_read(entry)


async def _entries(session: AsyncSession, where: Where) -> list[FileEntry]:
    project, model, version = where
    query = (
        select(FileEntry)
        .where(FileEntry.project == project, FileEntry.model == model, FileEntry.version == version)
        .order_by(col(FileEntry.path))
    )
    return list((await session.exec(query)).all())


async def entries_at(session: AsyncSession, where: Where, paths: list[str]) -> dict[str, FileEntry]:
    """The entries of those of ``paths`` that exist, by path, in one query."""
    project, model, version = where
    query = select(FileEntry).where(
        FileEntry.project == project,
        FileEntry.model == model,
        FileEntry.version == version,
        col(FileEntry.path).in_(paths),
    )
    return {entry.path: entry for entry in (await session.exec(query)).all()}


async def entry_or_404(session: AsyncSession, where: Where, path: str) -> FileEntry:
    project, model, version = where
    query = select(FileEntry).where(
        FileEntry.project == project,
        FileEntry.model == model,
        FileEntry.version == version,
        FileEntry.path == path,
    )
    entry = (await session.exec(query)).first()
    if entry is None:
        raise NotFound(f"{path} is not in {model}/{version}")
    return entry


@dataclass(frozen=True)
class Content:
    """Stored content, as recorded on every path that points at it: verified content, or
    (``object_key``) the object of a direct upload whose SHA-256 its uploader claimed."""

    sha256: str
    size: int
    object_key: str | None = None


async def held(session: AsyncSession, project: str, digests: set[str]) -> dict[str, Content]:
    """Content this project holds already. Only its own: knowing another project's digest
    must not be enough to link (and so read) that project's file; the bytes are sent once
    more then, and stored once all the same. Verified content wins over a direct upload's
    claimed one, which stays the project's own object."""
    if not digests:
        return {}
    query = (
        select(FileEntry.sha256, FileEntry.object_key, func.max(FileEntry.size))
        .where(FileEntry.project == project, col(FileEntry.sha256).in_(digests))
        .group_by(col(FileEntry.sha256), col(FileEntry.object_key))
    )
    found: dict[str, Content] = {}
    for sha, key, size in (await session.exec(query)).all():
        content = Content(sha, int(size), key)
        chosen = found.get(sha)
        if chosen is None or (chosen.object_key or "") > (key or ""):
            found[sha] = content  # verified first (no key), then the same object every time
    return found


async def record(
    session: AsyncSession,
    where: Where,
    path: str,
    content: Content,
    modified_at: datetime | None,
    user: str,
) -> FileEntry:
    return (await record_many(session, where, [(path, content, modified_at)], user))[0]


async def record_many(
    session: AsyncSession,
    where: Where,
    files: list[tuple[str, Content, datetime | None]],
    user: str,
) -> list[FileEntry]:
    """Point each path at its content: new entries, or existing ones updated (one query
    for all of them, however many)."""
    project, model, version = where
    now = datetime.now(UTC)
    existing = await entries_at(session, where, [path for path, _, _ in files])
    entries = []
    for path, content, modified_at in files:
        entry = existing.get(path)
        if entry is None:
            entry = FileEntry(
                project=project,
                model=model,
                version=version,
                path=path,
                sha256=content.sha256,
                size=content.size,
                object_key=content.object_key,
                modified_at=modified_at or now,
                uploaded_by=user,
                uploaded_at=now,
            )
            session.add(entry)
            existing[path] = entry  # a path named twice: the last one wins
        else:
            entry.sha256, entry.size = content.sha256, content.size
            entry.object_key = content.object_key
            entry.modified_at = modified_at or now
            entry.uploaded_by, entry.uploaded_at = user, now
        entries.append(entry)
    await session.flush()
    return entries


def to_read(entry: FileEntry) -> FileRead:
    modified = entry.modified_at
    return FileRead(
        path=entry.path,
        size=entry.size,
        sha256=entry.sha256,
        modified_at=modified if modified.tzinfo else modified.replace(tzinfo=UTC),
        uploaded_by=entry.uploaded_by,
    )
