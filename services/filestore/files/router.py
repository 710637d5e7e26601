"""``/v1/projects/{project}/models/...``: the file store's REST API."""

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Path, Request, status
from fastapi.responses import StreamingResponse

from services.common.problems import InvalidInput
from services.filestore.deps import SessionDep, StateDep, access_to
from services.filestore.files import service
from services.filestore.files.models import FileRead, LinkRequest, LinkResult
from services.filestore.files.paths import check_file_path

Component = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Sha256 = Annotated[str | None, Header(alias="X-Content-SHA256", pattern=r"^[0-9a-f]{64}$")]
router = APIRouter(prefix="/v1/projects/{project}/models", tags=["files"])
VERSION = "/{model}/versions/{version}"


@router.get("")
async def list_models(project: Component, request: Request, session: SessionDep) -> list[str]:
    await access_to(request, project, "read")
    return await service.list_models(session=session, project=project)


@router.get("/{model}/versions")
async def list_versions(
    project: Component, model: Component, request: Request, session: SessionDep
) -> list[str]:
    await access_to(request, project, "read")
    return await service.list_versions(session=session, project=project, model=model)


@router.get(VERSION + "/files")
async def list_files(
    project: Component, model: Component, version: Component, request: Request, session: SessionDep
) -> list[FileRead]:
    await access_to(request, project, "read")
    return await service.list_files(session=session, where=(project, model, version))


@router.put(VERSION + "/files/{path:path}", status_code=status.HTTP_201_CREATED)
async def upload(
    project: Component,
    model: Component,
    version: Component,
    path: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    sha256: Sha256 = None,
    content_length: Annotated[int | None, Header()] = None,
    modified_at: Annotated[datetime | None, Header(alias="X-Modified-At")] = None,
    file_size: Annotated[int | None, Header(alias="X-File-Size", ge=0)] = None,
) -> FileRead:
    """Store the body as ``path``. ``X-Content-SHA256``, when given, must match it or nothing
    is kept. With ``X-File-Size: N`` instead, the body is the file's N bytes followed by its
    digest as JSON, ``{"sha256": "<hex>"}`` (for a client that hashes the file while
    sending it), which must match. With neither, the file is recorded under the SHA-256
    computed here, which the answer carries."""
    if sha256 is not None and file_size is not None:
        raise InvalidInput("X-File-Size", "give the SHA-256 before the body or after it, not both")
    check_file_path(path)
    access = await access_to(request, project, "write")
    return await service.upload(
        session=session,
        blobs=state.blobs,
        where=(project, model, version),
        path=path,
        body=request.stream(),
        declared_sha256=sha256,
        declared_size=content_length,
        modified_at=modified_at,
        user=access.user,
        max_bytes=state.settings.max_file_bytes,
        max_age_s=state.settings.upload_max_age_s,
        trailer_after=file_size,
    )


@router.post(VERSION + "/link")
async def link(
    project: Component,
    model: Component,
    version: Component,
    data: LinkRequest,
    request: Request,
    session: SessionDep,
) -> LinkResult:
    """Point paths at content already stored; upload only what comes back as ``missing``."""
    for item in data.files:
        check_file_path(item.path)
    access = await access_to(request, project, "write")
    return await service.link(
        session=session, where=(project, model, version), items=data.files, user=access.user
    )


@router.get(VERSION + "/files/{path:path}", response_class=StreamingResponse)
async def download(
    project: Component,
    model: Component,
    version: Component,
    path: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
) -> StreamingResponse:
    check_file_path(path)
    await access_to(request, project, "read")
    entry, chunks, part = await service.open_file(
        session=session,
        blobs=state.blobs,
        where=(project, model, version),
        path=path,
        byte_range=request.headers.get("range"),
    )

    async def stream() -> AsyncIterator[bytes]:
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
            yield chunk

    headers = {
        "Content-Length": str(entry.size if part is None else part.length),
        "Accept-Ranges": "bytes",  # a pull cut half way asks for the rest (Range: bytes=N-)
        "ETag": f'"{entry.sha256}"',
        "X-Content-SHA256": entry.sha256,
    }
    if part is not None:
        headers["Content-Range"] = part.content_range(entry.size)
    return StreamingResponse(
        stream(),
        status_code=status.HTTP_200_OK if part is None else status.HTTP_206_PARTIAL_CONTENT,
        media_type="application/octet-stream",
        headers=headers,
    )


@router.delete(VERSION + "/files/{path:path}")
async def delete(
    project: Component,
    model: Component,
    version: Component,
    path: str,
    request: Request,
    session: SessionDep,
) -> FileRead:
    check_file_path(path)
    await access_to(request, project, "write")
    return await service.delete(session=session, where=(project, model, version), path=path)
