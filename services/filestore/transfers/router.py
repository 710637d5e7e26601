"""Transfer routes: presigned direct uploads/downloads (S3) and upload packs (any store)."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, status

from services.common.problems import conflict
from services.filestore.deps import SessionDep, StateDep, access_to
from services.filestore.files.models import FileRead
from services.filestore.files.router import VERSION, Component
from services.filestore.transfers import service
from services.filestore.transfers.models import (
    DownloadLinks,
    DownloadRequest,
    PartsToSign,
    SignedParts,
    TransferLimits,
    UploadComplete,
    UploadStart,
    UploadTicket,
)

router = APIRouter(tags=["transfers"])
MODELS = "/v1/projects/{project}/models"


@router.get("/v1/transfers")
async def transfer_limits(state: StateDep) -> TransferLimits:
    """How to move bytes here: direct S3 transfers from which size, pack limits."""
    return service.limits(state.settings, state.blobs)


@router.post(
    MODELS + VERSION + "/uploads",
    status_code=status.HTTP_201_CREATED,
    responses=conflict("direct transfers are not offered by this store"),
)
async def start_upload(
    project: Component,
    model: Component,
    version: Component,
    data: UploadStart,
    request: Request,
    state: StateDep,
) -> UploadTicket:
    """Start sending a file's bytes straight to S3, in parts: sign each part's URL with its
    CRC32 (``/parts``), PUT the part there, then complete the upload."""
    await access_to(request, project, "write")
    return await service.start_upload(
        blobs=state.blobs, settings=state.settings, project=project, data=data
    )


@router.post(
    MODELS + VERSION + "/uploads/{upload_id}/parts",
    responses=conflict("direct transfers are not offered by this store"),
)
async def sign_parts(
    project: Component,
    model: Component,
    version: Component,
    upload_id: UUID,
    data: PartsToSign,
    request: Request,
    state: StateDep,
) -> SignedParts:
    """Presigned PUT URLs for parts of a direct upload, each valid only for the bytes with
    the CRC32 given for it."""
    await access_to(request, project, "write")
    return await service.sign_parts(
        blobs=state.blobs,
        settings=state.settings,
        project=project,
        upload_id=upload_id,
        data=data,
    )


@router.post(
    MODELS + VERSION + "/uploads/{upload_id}/complete",
    status_code=201,
    responses=conflict("direct transfers are not offered by this store"),
)
async def complete_upload(
    project: Component,
    model: Component,
    version: Component,
    upload_id: UUID,
    data: UploadComplete,
    request: Request,
    state: StateDep,
    session: SessionDep,
) -> FileRead:
    """Assemble the parts; keep the file only if the size and the CRC32s that S3 computed
    match what was sent. ``sha256`` is the uploader's, checked by every pull."""
    access = await access_to(request, project, "write")
    return await service.complete_upload(
        session=session,
        blobs=state.blobs,
        settings=state.settings,
        where=(project, model, version),
        upload_id=upload_id,
        data=data,
        user=access.user,
    )


@router.delete(
    MODELS + VERSION + "/uploads/{upload_id}",
    status_code=204,
    responses=conflict("direct transfers are not offered by this store"),
)
async def abort_upload(
    project: Component,
    model: Component,
    version: Component,
    upload_id: UUID,
    request: Request,
    state: StateDep,
    multipart_id: Annotated[str | None, Query(max_length=1024)] = None,
) -> None:
    """Drop an upload that will not be completed, and its parts."""
    await access_to(request, project, "write")
    await service.abort_upload(
        blobs=state.blobs,
        project=project,
        upload_id=upload_id,
        multipart_id=multipart_id,
    )


@router.post(
    MODELS + VERSION + "/downloads",
    responses=conflict("direct transfers are not offered by this store"),
)
async def download_links(
    project: Component,
    model: Component,
    version: Component,
    data: DownloadRequest,
    request: Request,
    state: StateDep,
    session: SessionDep,
) -> DownloadLinks:
    """Presigned GET URLs for many files at once; check each against its ``sha256``."""
    await access_to(request, project, "read")
    return await service.download_links(
        session=session,
        blobs=state.blobs,
        settings=state.settings,
        where=(project, model, version),
        paths=data.paths,
    )


@router.post(
    MODELS + VERSION + "/packs",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def store_pack(
    project: Component,
    model: Component,
    version: Component,
    request: Request,
    state: StateDep,
    session: SessionDep,
) -> list[FileRead]:
    """Many small files in one tar body, each member with its SHA-256 in the PAX header
    ``MODELCLOUD.sha256``: all are stored, or none."""
    access = await access_to(request, project, "write")
    return await service.store_pack(
        session=session,
        blobs=state.blobs,
        settings=state.settings,
        where=(project, model, version),
        body=request.stream(),
        user=access.user,
    )
