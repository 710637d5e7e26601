"""``/v1/projects/{project}/services/{service}/versions``: upload a bundle, build, publish,
take offline, aliases, and the bundle download the builder uses."""

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.responses import FileResponse

from services.common.problems import InvalidInput, NotFound, conflict
from services.registry.bundles.archive import BundleRejected, receive_bundle
from services.registry.deps import CurrentUser, SettingsDep, StateDep, UnitOfWorkDep
from services.registry.names import Name
from services.registry.versions import service
from services.registry.versions.models import AliasRead, AliasSet, PublishRequest, VersionRead

router = APIRouter(prefix="/v1/projects/{project}/services/{name}", tags=["versions"])
_CHUNK = 1 << 20


@router.post(
    "/versions",
    status_code=status.HTTP_201_CREATED,
    responses=conflict("the version exists already"),
)
async def register_version(
    project: Name,
    name: Name,
    version: Annotated[str, Form(description="letters, digits, '.', '+', '-'; no '_'")],
    bundle: Annotated[UploadFile, File(description="the code folder as .tar or .tar.gz")],
    state: StateDep,
    user: CurrentUser,
    uow: UnitOfWorkDep,
    settings: SettingsDep,
) -> VersionRead:
    service.check_version_string(version)
    scratch = settings.data_dir.resolve() / "uploads"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        target = Path(folder) / "bundle.tar"
        try:
            sha256, size = await receive_bundle(
                _chunks(bundle), target, max_bytes=settings.max_bundle_bytes
            )
        except BundleRejected as exc:
            raise InvalidInput("bundle", exc.message) from None
        return await service.register_version(
            uow=uow,
            user=user,
            project_name=project,
            service_name=name,
            version=version,
            upload=target,
            sha256=sha256,
            size=size,
            store=state.bundles,
        )


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_CHUNK):
        yield chunk


@router.get("/versions")
async def list_versions(
    project: Name, name: Name, user: CurrentUser, uow: UnitOfWorkDep
) -> list[VersionRead]:
    return await service.list_versions(uow=uow, user=user, project_name=project, service_name=name)


@router.get("/versions/{version}")
async def get_version(
    project: Name, name: Name, version: str, user: CurrentUser, uow: UnitOfWorkDep
) -> VersionRead:
    found_project, found_service, row = await service.get_version_for(
        uow=uow, user=user, project_name=project, service_name=name, version=version
    )
    return await service.to_read(uow=uow, project=found_project, service=found_service, row=row)


@router.get("/versions/{version}/bundle", response_class=FileResponse)
async def download_bundle(
    project: Name, name: Name, version: str, state: StateDep, user: CurrentUser, uow: UnitOfWorkDep
) -> FileResponse:
    _, _, row = await service.get_version_for(
        uow=uow, user=user, project_name=project, service_name=name, version=version
    )
    try:
        path = state.bundles.path_of(row.bundle_sha256)
    except KeyError:
        raise NotFound(f"the bundle of version {version!r} is missing from the store") from None
    return FileResponse(path, media_type="application/x-tar", filename=f"{name}-{version}.tar")


@router.post(
    "/versions/{version}/build",
    status_code=status.HTTP_202_ACCEPTED,
    responses=conflict("the version is not in a state to build"),
)
async def build(
    project: Name, name: Name, version: str, user: CurrentUser, uow: UnitOfWorkDep
) -> VersionRead:
    return await service.request_build(
        uow=uow, user=user, project_name=project, service_name=name, version=version
    )


@router.post(
    "/versions/{version}/publish",
    status_code=status.HTTP_202_ACCEPTED,
    responses=conflict("the version is not built"),
)
async def publish(
    project: Name,
    name: Name,
    version: str,
    user: CurrentUser,
    uow: UnitOfWorkDep,
    data: PublishRequest | None = None,
) -> VersionRead:
    return await service.request_publish(
        uow=uow,
        user=user,
        project_name=project,
        service_name=name,
        version=version,
        replicas=(data or PublishRequest()).replicas,
    )


@router.post(
    "/versions/{version}/offline",
    status_code=status.HTTP_202_ACCEPTED,
    responses=conflict("the version is not online"),
)
async def offline(
    project: Name, name: Name, version: str, user: CurrentUser, uow: UnitOfWorkDep
) -> VersionRead:
    return await service.request_offline(
        uow=uow, user=user, project_name=project, service_name=name, version=version
    )


@router.put("/aliases/{alias}")
async def set_alias(
    project: Name, name: Name, alias: Name, data: AliasSet, user: CurrentUser, uow: UnitOfWorkDep
) -> AliasRead:
    return await service.set_alias(
        uow=uow,
        user=user,
        project_name=project,
        service_name=name,
        alias=alias,
        version=data.version,
    )
