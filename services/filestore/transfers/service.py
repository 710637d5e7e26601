"""Direct uploads and downloads through presigned URLs, and upload packs.

A direct upload is stateless on the service side: its object's key is derived from the
project and a random upload id, each part goes straight to S3 under a URL signed with the
part's CRC32, and completion compares what S3 reports (size, composite CRC32) with what
the client read; the file store never reads the bytes. So the SHA-256 of a direct upload
is only claimed: the entries it makes read that upload's own object, in that project, and
the digest never stands for anyone else's bytes (see ``files/placements.py``).

A pack carries many small files in one tar body, each member with its SHA-256 in a PAX
header; every member is checked before any is stored, so a bad pack stores nothing. The
blob store keeps the checked pack as it likes: whole, as one object that its members are
read from as byte ranges (S3), or member by member (a local folder).
"""

import hashlib
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import anyio.to_thread
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.problem import FieldError
from services.common.problems import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from services.common.tar_guard import TarLimits, TarRejected, open_checked_tar
from services.filestore.blobs.cleanup import scratch_folder
from services.filestore.blobs.s3 import OBJECTS_PREFIX, part_size_for
from services.filestore.blobs.store import (
    BlobStore,
    DirectTransfers,
    PackMember,
    PartsRejected,
    Placement,
    UploadNotFound,
    composite_crc32,
)
from services.filestore.files.commit_locks import lock_names
from services.filestore.files.expiry import UploadExpired, check_age
from services.filestore.files.models import FileRead
from services.filestore.files.paths import check_file_path
from services.filestore.files.placements import place, placements_of, presignable
from services.filestore.files.service import (
    Content,
    Where,
    entries_at,
    held,
    record,
    record_many,
    to_read,
)
from services.filestore.settings import FilestoreSettings
from services.filestore.transfers.models import (
    DownloadLink,
    DownloadLinks,
    PartsToSign,
    SignedParts,
    TransferLimits,
    UploadComplete,
    UploadStart,
    UploadTicket,
)

PACK_SHA256 = "MODELCLOUD.sha256"
log = logging.getLogger(__name__)


def limits(settings: FilestoreSettings, blobs: BlobStore) -> TransferLimits:
    return TransferLimits(
        direct_uploads=settings.direct_uploads and blobs.direct is not None,
        direct_downloads=settings.direct_downloads and blobs.direct is not None,
        direct_min_bytes=settings.direct_min_bytes,
        part_size=settings.part_size,
        pack_max_bytes=settings.pack_max_bytes,
        pack_max_files=settings.pack_max_files,
    )


def _direct(blobs: BlobStore, offered: bool, what: str) -> DirectTransfers:
    if blobs.direct is None:
        raise Conflict("this file store keeps files where clients cannot reach them directly")
    if not offered:
        raise Conflict(f"this file store does not offer direct {what}; go through it instead")
    return blobs.direct


def new_upload_id(now: float | None = None) -> UUID:
    """A UUIDv7: its first 48 bits are the upload's start (Unix ms), which completion reads
    back to enforce ``upload_max_age_s`` with no state kept here. A client cannot move it:
    the multipart upload it completes was started under the key this id names."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return UUID(int=value)


def upload_started(upload_id: UUID) -> float | None:
    """When the upload ``upload_id`` started (``time.time()``), if this file store named it."""
    return (upload_id.int >> 80) / 1000 if upload_id.version == 7 else None


def upload_key(project: str, upload_id: UUID) -> str:
    """Where a direct upload's bytes go: derived, never taken from the client, so an upload
    id names nothing outside its project."""
    return f"{OBJECTS_PREFIX}{project}/{upload_id}"


async def start_upload(
    *, blobs: BlobStore, settings: FilestoreSettings, project: str, data: UploadStart
) -> UploadTicket:
    check_file_path(data.path)
    if data.size > settings.max_file_bytes:
        raise PayloadTooLarge(f"{data.path} is larger than {settings.max_file_bytes} bytes")
    direct = _direct(blobs, settings.direct_uploads, "uploads")
    upload_id = new_upload_id()
    multipart_id = await anyio.to_thread.run_sync(
        direct.start_upload, upload_key(project, upload_id)
    )
    part_size = part_size_for(data.size, settings.part_size)
    return UploadTicket(
        upload_id=upload_id,
        multipart_id=multipart_id,
        part_size=part_size,
        parts=-(-data.size // part_size),  # the size is at least 1
    )


async def sign_parts(
    *,
    blobs: BlobStore,
    settings: FilestoreSettings,
    project: str,
    upload_id: UUID,
    data: PartsToSign,
) -> SignedParts:
    """Presigned URLs for parts whose CRC32 the client has computed: S3 takes no other bytes."""
    direct = _direct(blobs, settings.direct_uploads, "uploads")
    key = upload_key(project, upload_id)
    expires_s = settings.presign_expires_s
    urls = [
        direct.part_url(key, data.multipart_id, part.number, part.crc32, expires_s)
        for part in data.parts
    ]
    expires = datetime.now(UTC) + timedelta(seconds=expires_s)
    return SignedParts(urls=urls, expires_at=expires)


async def complete_upload(
    *,
    session: AsyncSession,
    blobs: BlobStore,
    settings: FilestoreSettings,
    where: Where,
    upload_id: UUID,
    data: UploadComplete,
    user: str,
) -> FileRead:
    """Have S3 assemble the parts, check the size and the CRC32 that S3 computed from the
    bytes it received against what the client read, then record the path under the
    client's SHA-256. A mismatch removes the object and records nothing.

    The SHA-256 is the uploader's, as in Git LFS: checking it here would mean reading every
    byte back. The uploader is a writer of the project, who may store any bytes in it
    anyway; S3's CRC32s make sure the bytes kept are the bytes the client hashed, and every
    pull checks the SHA-256 again before a file reaches its reader. What the claim can never
    do is reach content of another project: the path reads this upload's object, unless the
    project holds that content already (then it is kept once).

    Completing again an upload that completed answers the same (a client whose answer was
    lost sends it again); one started over ``upload_max_age_s`` ago is refused with 410."""
    check_file_path(data.path)
    direct = _direct(blobs, settings.direct_uploads, "uploads")
    key = upload_key(where[0], upload_id)
    crc32s = [part.crc32 for part in data.parts]
    started = upload_started(upload_id)
    if started is None:
        raise UploadExpired(f"{data.path}: {upload_id} is no upload this file store started")
    try:
        check_age(started=started, max_age_s=settings.upload_max_age_s, path=data.path)
    except UploadExpired:
        await anyio.to_thread.run_sync(direct.discard, key, data.multipart_id)
        raise

    def finish() -> None:
        try:
            finished = direct.finish_upload(
                key, data.multipart_id, [(part.etag, part.crc32) for part in data.parts]
            )
        except UploadNotFound:
            raise
        except PartsRejected as exc:
            direct.discard(key, data.multipart_id)
            raise InvalidInput(
                "parts", f"{data.path}: the object store refused them: {exc}"
            ) from None
        except Exception:
            direct.discard(key, data.multipart_id)
            raise
        if finished.size != data.size:
            direct.discard(key, None)
            raise InvalidInput(
                "size", f"{data.path}: received {finished.size} of {data.size} bytes"
            )
        if finished.crc32 is not None and finished.crc32 != composite_crc32(crc32s):
            direct.discard(key, None)
            raise InvalidInput(
                "parts", f"{data.path}: the bytes received are not the ones whose CRC32s were sent"
            )
        if finished.crc32 is None:
            log.warning(
                "the object store reported no CRC32 for a direct upload",
                extra={"key": key},
            )

    try:
        await anyio.to_thread.run_sync(finish)
    except UploadNotFound:
        done = (await entries_at(session, where, [data.path])).get(data.path)
        if done is not None and (done.sha256, done.size) == (data.sha256, data.size):
            return to_read(done)  # completed already: this is a completion sent again
        raise InvalidInput(
            "upload_id", f"{data.path}: nothing was uploaded for {upload_id}"
        ) from None
    # Locked against the collector until committed (``files/commit_locks.py``).
    await session.rollback()
    await lock_names(session, [data.sha256, key])
    # Another project's copy of the same digest is no proof that these bytes are it.
    content = (await held(session, where[0], {data.sha256})).get(data.sha256)
    if content is not None and content.size == data.size:  # this project's own: kept once
        await anyio.to_thread.run_sync(direct.discard, key, None)
    else:
        content = Content(data.sha256, data.size, object_key=key)
    entry = await record(session, where, data.path, content, data.modified_at, user)
    await session.commit()
    return to_read(entry)


async def abort_upload(
    *, blobs: BlobStore, project: str, upload_id: UUID, multipart_id: str | None
) -> None:
    direct = _direct(blobs, True, "uploads")  # dropping one is always allowed
    await anyio.to_thread.run_sync(direct.discard, upload_key(project, upload_id), multipart_id)


async def download_links(
    *,
    session: AsyncSession,
    blobs: BlobStore,
    settings: FilestoreSettings,
    where: Where,
    paths: list[str],
) -> DownloadLinks:
    direct = _direct(blobs, settings.direct_downloads, "downloads")
    for path in paths:
        check_file_path(path)
    found = await entries_at(session, where, paths)
    if missing := [path for path in paths if path not in found]:
        raise NotFound(f"{missing[0]} is not in {where[1]}/{where[2]}")
    entries = [found[path] for path in paths]
    placements = await placements_of(session, entries, where[0])
    expires_s = settings.presign_expires_s
    object_urls: dict[str, str] = {}  # one URL per pack, so clients can group by it
    links = []
    url: str | None
    for entry, placement in zip(entries, placements, strict=True):
        if placement is None:
            url, offset = direct.download_url(entry.sha256, expires_s), None
        elif not presignable(placement, where[0]):
            # Another project's pack (or one from before packs were named by project): a
            # presigned URL binds no range and would hand out its other files. The client
            # reads through the file store, which sends the ranged GET itself.
            url, offset = None, None
        else:
            if placement.key not in object_urls:
                object_urls[placement.key] = direct.object_url(placement.key, expires_s)
            url, offset = object_urls[placement.key], placement.offset
        links.append(
            DownloadLink(
                path=entry.path, url=url, offset=offset, size=entry.size, sha256=entry.sha256
            )
        )
    expires = datetime.now(UTC) + timedelta(seconds=expires_s)
    return DownloadLinks(files=links, expires_at=expires)


@dataclass(frozen=True)
class _Member:
    path: str
    offset: int  # of its bytes in the pack
    content: Content
    modified_at: datetime


async def store_pack(
    *,
    session: AsyncSession,
    blobs: BlobStore,
    settings: FilestoreSettings,
    where: Where,
    body: AsyncIterator[bytes],
    user: str,
) -> list[FileRead]:
    """Store every file of a tar pack, or none of them. A pack kept whole is named by its
    project: its bytes are that project's, and presigned URLs of it go to no other."""
    started = time.time()
    with tempfile.TemporaryDirectory(dir=scratch_folder(settings)) as folder:
        pack = Path(folder) / "pack.tar"
        size = 0
        with pack.open("wb") as out:
            async for chunk in body:
                size += len(chunk)
                if size > settings.pack_max_bytes:
                    raise PayloadTooLarge(f"a pack holds at most {settings.pack_max_bytes} bytes")
                await anyio.to_thread.run_sync(out.write, chunk)
        members = await anyio.to_thread.run_sync(_unpack, pack, settings.pack_max_files)
        check_age(started=started, max_age_s=settings.upload_max_age_s, path="the pack")
        blobs_in_pack = {  # each content once, however many paths it has
            m.content.sha256: PackMember(m.content.sha256, m.offset, m.content.size)
            for m in members
        }
        key = await anyio.to_thread.run_sync(
            blobs.put_pack, pack, list(blobs_in_pack.values()), where[0]
        )
    # Locked against the collector until committed (``files/commit_locks.py``): members
    # found stored (a local store keeps each content once) must still be there.
    await session.rollback()
    await lock_names(session, blobs_in_pack)
    if key is None:
        # One trip to a worker thread for them all: the lock is held meanwhile (on SQLite,
        # the database's write lock).
        digests = list(blobs_in_pack)
        if not await anyio.to_thread.run_sync(lambda: all(map(blobs.exists, digests))):
            raise ServiceUnavailable("a file of the pack was removed meanwhile; send again")
    else:
        for blob in blobs_in_pack.values():
            place(session, blob.sha256, Placement(key, blob.offset, blob.size))
    entries = await record_many(
        session, where, [(m.path, m.content, m.modified_at) for m in members], user
    )
    await session.commit()
    return [to_read(e) for e in entries]


def _unpack(pack: Path, max_files: int) -> list[_Member]:
    members: list[_Member] = []
    errors: list[FieldError] = []
    seen: set[str] = set()
    try:
        # The raw headers are checked before tarfile parses one: a pax header of 100,000
        # digits held the GIL for 15 s in tarfile's regexes (see services/common/tar_guard).
        limits = TarLimits(max_members=max_files, compressed=False)
        with open_checked_tar(pack, limits, what="the pack") as archive:
            for index, info in enumerate(archive):
                field = f"pack[{index}]"
                if index >= max_files:
                    raise InvalidInput("body", f"a pack holds at most {max_files} files")
                if not info.isreg():
                    errors.append(FieldError(field=field, message=f"{info.name}: not a file"))
                    continue
                if info.issparse():  # its bytes in the pack are not the file's: no placement
                    errors.append(FieldError(field=field, message=f"{info.name}: a sparse file"))
                    continue
                check_file_path(info.name)
                if info.name in seen:
                    errors.append(FieldError(field=field, message=f"{info.name}: sent twice"))
                    continue
                seen.add(info.name)
                declared = info.pax_headers.get(PACK_SHA256, "")
                reader = archive.extractfile(info)
                if reader is None:  # pragma: no cover - regular members always have data
                    continue
                sha256 = hashlib.sha256()
                with reader:
                    while chunk := reader.read(1 << 20):
                        sha256.update(chunk)
                try:  # a pax mtime may be any float: 1e300, inf, nan
                    modified_at = datetime.fromtimestamp(info.mtime, UTC)
                except (OverflowError, ValueError, OSError):
                    errors.append(
                        FieldError(
                            field=f"{field}.mtime",
                            message=f"{info.name}: {info.mtime!r} is not a time in years 1-9999",
                        )
                    )
                    continue
                if sha256.hexdigest() != declared:
                    errors.append(
                        FieldError(
                            field=f"{field}.{PACK_SHA256}",
                            message=f"{info.name}: the content's SHA-256 is {sha256.hexdigest()}",
                        )
                    )
                    continue
                members.append(
                    _Member(
                        path=info.name,
                        offset=info.offset_data,
                        content=Content(sha256.hexdigest(), info.size),
                        modified_at=modified_at,
                    )
                )
    except TarRejected as exc:
        field = "body" if exc.member is None else f"pack[{exc.member}]"
        raise InvalidInput(field, exc.message) from None
    except tarfile.TarError as exc:
        raise InvalidInput("body", f"not a readable tar pack: {exc}") from None
    if errors:
        raise InvalidInput(errors=errors)
    return members
