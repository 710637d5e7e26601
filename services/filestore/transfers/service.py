"""Direct uploads and downloads through presigned URLs, and upload packs.

A direct upload is stateless on the service side: its staging key is derived from the
project and a random upload id, and completion re-reads the staged bytes, so nothing a
client sends back is trusted. A pack carries many small files in one tar body, each member
with its SHA-256 in a PAX header; every member is checked before any is stored, so a bad
pack stores nothing.
"""

import hashlib
import tarfile
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import anyio.to_thread
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.problem import FieldError
from services.common.problems import Conflict, InvalidInput, PayloadTooLarge
from services.filestore.blobs.s3 import STAGING_PREFIX
from services.filestore.blobs.store import BlobStore, DirectTransfers, NothingStaged
from services.filestore.files.models import FileRead
from services.filestore.files.paths import check_file_path
from services.filestore.files.service import Content, Where, entry_or_404, record, to_read
from services.filestore.settings import FilestoreSettings
from services.filestore.transfers.models import (
    DownloadLink,
    DownloadLinks,
    TransferLimits,
    UploadComplete,
    UploadStart,
    UploadTicket,
)

PACK_SHA256 = "MODELCLOUD.sha256"
_PUT_WORKERS = 8


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


def staging_key(project: str, upload_id: UUID) -> str:
    return f"{STAGING_PREFIX}{project}/{upload_id}"


async def start_upload(
    *, blobs: BlobStore, settings: FilestoreSettings, project: str, data: UploadStart
) -> UploadTicket:
    check_file_path(data.path)
    if data.size > settings.max_file_bytes:
        raise PayloadTooLarge(f"{data.path} is larger than {settings.max_file_bytes} bytes")
    direct = _direct(blobs, settings.direct_uploads, "uploads")
    upload_id = uuid4()
    multipart_id, urls = await anyio.to_thread.run_sync(
        direct.start_upload,
        staging_key(project, upload_id),
        data.size,
        settings.part_size,
        settings.presign_expires_s,
    )
    return UploadTicket(
        upload_id=upload_id,
        multipart_id=multipart_id,
        part_size=settings.part_size,
        urls=urls,
        expires_at=datetime.now(UTC) + timedelta(seconds=settings.presign_expires_s),
    )


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
    """Check the staged bytes against the declared digest and size, then record the path.
    A mismatch removes the staged bytes and records nothing."""
    check_file_path(data.path)
    direct = _direct(blobs, settings.direct_uploads, "uploads")
    key = staging_key(where[0], upload_id)

    def finish_and_inspect() -> Content:
        try:
            direct.finish_upload(key, data.multipart_id, data.etags)
            staged = direct.inspect_staged(key)
        except Exception:
            direct.discard(key, data.multipart_id)
            raise
        if staged.size != data.size:
            direct.discard(key, None)
            raise InvalidInput("size", f"{data.path}: received {staged.size} of {data.size} bytes")
        if staged.sha256 != data.sha256:
            direct.discard(key, None)
            raise InvalidInput("sha256", f"{data.path}: the content's SHA-256 is {staged.sha256}")
        direct.promote(key, staged.sha256)
        return Content(staged.sha256, staged.md5, staged.size)

    try:
        content = await anyio.to_thread.run_sync(finish_and_inspect)
    except NothingStaged:
        raise InvalidInput(
            "upload_id", f"{data.path}: nothing was uploaded for {upload_id}"
        ) from None
    entry = await record(session, where, data.path, content, data.modified_at, user)
    await session.commit()
    return to_read(entry)


async def abort_upload(
    *, blobs: BlobStore, project: str, upload_id: UUID, multipart_id: str | None
) -> None:
    direct = _direct(blobs, True, "uploads")  # dropping one is always allowed
    await anyio.to_thread.run_sync(direct.discard, staging_key(project, upload_id), multipart_id)


async def download_links(
    *,
    session: AsyncSession,
    blobs: BlobStore,
    settings: FilestoreSettings,
    where: Where,
    paths: list[str],
) -> DownloadLinks:
    direct = _direct(blobs, settings.direct_downloads, "downloads")
    links = []
    for path in paths:
        check_file_path(path)
        entry = await entry_or_404(session, where, path)
        url = direct.download_url(entry.sha256, settings.presign_expires_s)
        links.append(DownloadLink(path=path, url=url, size=entry.size, sha256=entry.sha256))
    expires = datetime.now(UTC) + timedelta(seconds=settings.presign_expires_s)
    return DownloadLinks(files=links, expires_at=expires)


@dataclass(frozen=True)
class _Member:
    path: str
    file: Path
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
    """Store every file of a tar pack, or none of them."""
    scratch = settings.data_dir.resolve() / "uploads"
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        pack = Path(folder) / "pack.tar"
        size = 0
        with pack.open("wb") as out:
            async for chunk in body:
                size += len(chunk)
                if size > settings.pack_max_bytes:
                    raise PayloadTooLarge(f"a pack holds at most {settings.pack_max_bytes} bytes")
                await anyio.to_thread.run_sync(out.write, chunk)
        members = await anyio.to_thread.run_sync(
            _unpack, pack, Path(folder), settings.pack_max_files
        )

        def put_all() -> None:
            with ThreadPoolExecutor(_PUT_WORKERS) as pool:
                for done in [pool.submit(blobs.put, m.file, m.content.sha256) for m in members]:
                    done.result()

        await anyio.to_thread.run_sync(put_all)
    entries = [
        await record(session, where, m.path, m.content, m.modified_at, user) for m in members
    ]
    await session.commit()
    return [to_read(e) for e in entries]


def _unpack(pack: Path, folder: Path, max_files: int) -> list[_Member]:
    members: list[_Member] = []
    errors: list[FieldError] = []
    seen: set[str] = set()
    try:
        with tarfile.open(pack, mode="r:") as archive:
            for index, info in enumerate(archive):
                field = f"pack[{index}]"
                if index >= max_files:
                    raise InvalidInput("body", f"a pack holds at most {max_files} files")
                if not info.isreg():
                    errors.append(FieldError(field=field, message=f"{info.name}: not a file"))
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
                target = folder / f"member-{index}"
                sha256 = hashlib.sha256()
                md5 = hashlib.md5(usedforsecurity=False)
                with reader, target.open("wb") as out:
                    while chunk := reader.read(1 << 20):
                        sha256.update(chunk)
                        md5.update(chunk)
                        out.write(chunk)
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
                        file=target,
                        content=Content(sha256.hexdigest(), md5.hexdigest(), info.size),
                        modified_at=datetime.fromtimestamp(info.mtime, UTC),
                    )
                )
    except tarfile.TarError as exc:
        raise InvalidInput("body", f"not a readable tar pack: {exc}") from None
    if errors:
        raise InvalidInput(errors=errors)
    return members
