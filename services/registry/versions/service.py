"""Registering a version from an uploaded bundle, moving it through its lifecycle on
requests, and applying the builder's outcomes."""

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from modelcloud_proto.events import (
    BuildRequested,
    OfflineRequested,
    PublishRequested,
    Replica,
    VersionOffline,
    VersionOnline,
    VersionRegistered,
)
from modelcloud_proto.manifest import ModelManifest
from modelcloud_proto.problem import FieldError
from modelcloud_proto.specs import BuildSpec, PerformanceNotes
from services.common.problems import Conflict, InvalidInput, NotFound
from services.registry.accounts.models import User
from services.registry.bundles.archive import BundleRejected, CheckedBundle, check_bundle
from services.registry.bundles.store import BundleStore
from services.registry.interfaces.build_file import BuildFileRejected, parse_build_file
from services.registry.interfaces.parser import InterfaceError, parse_interface_in_child
from services.registry.model_services.models import ModelService
from services.registry.model_services.service import get_service_for
from services.registry.names import VERSION_RULE
from services.registry.projects.models import Project, Role
from services.registry.unit_of_work import UnitOfWork
from services.registry.versions.models import (
    BUILDABLE,
    ONLINE,
    PUBLISHABLE,
    Alias,
    AliasRead,
    ServiceVersion,
    VersionRead,
    VersionState,
)

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,63}$")


def check_version_string(version: str) -> None:
    if not _VERSION.match(version):
        raise InvalidInput("version", f"must be {VERSION_RULE}, got {version!r}")


async def register_version(
    *,
    uow: UnitOfWork,
    user: User,
    project_name: str,
    service_name: str,
    version: str,
    upload: Path,
    sha256: str,
    size: int,
    store: BundleStore,
) -> VersionRead:
    """Check the uploaded bundle whole, read its interface and build spec without running
    it, store it by content and record the version. A rejected bundle writes nothing."""
    check_version_string(version)
    project, service = await get_service_for(
        uow=uow, user=user, project_name=project_name, name=service_name, needed=Role.WRITE
    )
    if await _find(uow=uow, service=service, version=version) is not None:
        raise Conflict(f"version {version!r} of {service.name!r} exists already")
    # Reading a big compressed archive, a 1 MiB source or 256 KiB of YAML takes a while:
    # keep the event loop free meanwhile (the source in a child process: ast holds the GIL).
    bundle = await asyncio.to_thread(_checked, upload, sha256=sha256, size=size)
    try:
        parsed = await parse_interface_in_child(bundle.cloud_model)
    except InterfaceError as exc:
        raise InvalidInput("bundle", f"cloud_model.py: {exc}") from None
    try:
        build_file = await asyncio.to_thread(
            parse_build_file, bundle.modelcloud_yml, has_requirements=bundle.has_requirements
        )
    except BuildFileRejected as exc:
        raise InvalidInput(
            errors=[
                FieldError(field=f"bundle.{path}", message=message) for path, message in exc.errors
            ]
        ) from None
    now = datetime.now(UTC)
    row = ServiceVersion(
        service_id=service.id,
        version=version,
        bundle_sha256=sha256,
        bundle_size=size,
        interface=parsed.manifest.model_dump(mode="json"),
        interface_warnings=parsed.warnings,
        build_spec=build_file.build_spec.model_dump(mode="json"),
        created_at=now,
        updated_at=now,
    )
    uow.session.add(row)
    uow.emit(
        VersionRegistered(
            project=project.name,
            service=service.name,
            version_id=row.id,
            version=version,
            bundle_sha256=sha256,
        )
    )
    # Content-addressed: a duplicate, or an orphan left by a failed commit, costs nothing.
    await asyncio.to_thread(store.put, upload, sha256)
    try:
        await uow.commit()
    except IntegrityError:
        raise Conflict(f"version {version!r} of {service.name!r} exists already") from None
    return await to_read(uow=uow, project=project, service=service, row=row)


def _checked(upload: Path, *, sha256: str, size: int) -> CheckedBundle:
    try:
        return check_bundle(upload, sha256=sha256, size=size)
    except BundleRejected as exc:
        raise InvalidInput("bundle", exc.message) from None


async def get_version_for(
    *,
    uow: UnitOfWork,
    user: User,
    project_name: str,
    service_name: str,
    version: str,
    needed: Role = Role.READ,
) -> tuple[Project, ModelService, ServiceVersion]:
    project, service = await get_service_for(
        uow=uow, user=user, project_name=project_name, name=service_name, needed=needed
    )
    row = await _find(uow=uow, service=service, version=version)
    if row is None:
        raise NotFound(f"no version {version!r} of service {service.name!r}")
    return project, service, row


async def list_versions(
    *, uow: UnitOfWork, user: User, project_name: str, service_name: str
) -> list[VersionRead]:
    project, service = await get_service_for(
        uow=uow, user=user, project_name=project_name, name=service_name
    )
    query = (
        select(ServiceVersion)
        .where(ServiceVersion.service_id == service.id)
        .order_by(col(ServiceVersion.created_at))
    )
    rows = (await uow.session.exec(query)).all()
    return [await to_read(uow=uow, project=project, service=service, row=row) for row in rows]


async def request_build(
    *, uow: UnitOfWork, user: User, project_name: str, service_name: str, version: str
) -> VersionRead:
    project, service, row = await _step(
        uow=uow,
        user=user,
        where=(project_name, service_name, version),
        allowed=BUILDABLE,
        action="build",
        state=VersionState.BUILDING,
    )
    uow.emit(
        BuildRequested(
            project=project.name,
            service=service.name,
            version_id=row.id,
            version=row.version,
            bundle_sha256=row.bundle_sha256,
            build_spec=BuildSpec.model_validate(row.build_spec),
        )
    )
    return await _commit(uow=uow, project=project, service=service, row=row)


async def request_publish(
    *,
    uow: UnitOfWork,
    user: User,
    project_name: str,
    service_name: str,
    version: str,
    replicas: int,
) -> VersionRead:
    project, service, row = await _step(
        uow=uow,
        user=user,
        where=(project_name, service_name, version),
        allowed=PUBLISHABLE,
        action="publish",
        state=VersionState.PUBLISHING,
    )
    uow.emit(
        PublishRequested(
            project=project.name,
            service=service.name,
            version_id=row.id,
            version=row.version,
            port=service.port,
            device=PerformanceNotes.model_validate(service.performance).device,
            replicas=replicas,
        )
    )
    return await _commit(uow=uow, project=project, service=service, row=row)


async def request_offline(
    *, uow: UnitOfWork, user: User, project_name: str, service_name: str, version: str
) -> VersionRead:
    project, service, row = await _step(
        uow=uow,
        user=user,
        where=(project_name, service_name, version),
        allowed=ONLINE | {VersionState.PUBLISHING},
        action="take offline",
        state=VersionState.OFFLINE,
    )
    uow.emit(
        OfflineRequested(
            project=project.name, service=service.name, version_id=row.id, version=row.version
        )
    )
    uow.emit(
        VersionOffline(
            project=project.name,
            service=service.name,
            version_id=row.id,
            version=row.version,
            api_version=row.api_version,
        )
    )
    row.replicas = []
    return await _commit(uow=uow, project=project, service=service, row=row)


async def set_alias(
    *, uow: UnitOfWork, user: User, project_name: str, service_name: str, alias: str, version: str
) -> AliasRead:
    _, service, row = await get_version_for(
        uow=uow,
        user=user,
        project_name=project_name,
        service_name=service_name,
        version=version,
        needed=Role.WRITE,
    )
    existing = await uow.session.get(Alias, (service.id, alias))
    if existing is None:
        uow.session.add(Alias(service_id=service.id, name=alias, version_id=row.id))
    else:
        existing.version_id = row.id
    await uow.commit()
    return AliasRead(name=alias, version=row.version)


# ----------------------------------------------------------------------------- outcomes


async def build_finished(
    *, uow: UnitOfWork, version_id: UUID, ok: bool, detail: str | None
) -> None:
    row = await uow.session.get(ServiceVersion, version_id)
    if row is None or row.state is not VersionState.BUILDING:
        return  # stale or out of order: the version moved on (or was deleted) meanwhile
    _move(row, VersionState.BUILT if ok else VersionState.BUILD_FAILED, detail)


async def deployment_ready(*, uow: UnitOfWork, version_id: UUID, replicas: list[Replica]) -> None:
    row = await uow.session.get(ServiceVersion, version_id)
    if row is None or row.state is not VersionState.PUBLISHING:
        return
    service = await uow.session.get(ModelService, row.service_id)
    if service is None:
        return
    project = await uow.session.get(Project, service.project_id)
    if project is None:
        return
    service.api_versions += 1
    row.api_version = service.api_versions
    row.replicas = [replica.model_dump(mode="json") for replica in replicas]
    _move(row, VersionState.ONLINE)
    performance = PerformanceNotes.model_validate(service.performance)
    uow.emit(
        VersionOnline(
            project=project.name,
            service=service.name,
            version_id=row.id,
            version=row.version,
            api_version=row.api_version,
            replicas=replicas,
            device=performance.device,
            public=service.public,
            timeout_s=performance.timeout_s,
            commands=[c.name for c in ModelManifest.model_validate(row.interface).commands],
        )
    )


async def deployment_failed(*, uow: UnitOfWork, version_id: UUID, reason: str) -> None:
    row = await uow.session.get(ServiceVersion, version_id)
    if row is None or row.state is not VersionState.PUBLISHING:
        return
    _move(row, VersionState.PUBLISH_FAILED, reason)


async def replicas_changed(
    *, uow: UnitOfWork, version_id: UUID, replica: Replica, previous_address: str | None = None
) -> None:
    row = await uow.session.get(ServiceVersion, version_id)
    if row is None or row.state is not VersionState.ONLINE:
        return
    gone = {replica.address, previous_address}
    known = [r for r in row.replicas if r.get("address") not in gone]
    row.replicas = [*known, replica.model_dump(mode="json")]


# ----------------------------------------------------------------------------- helpers


async def to_read(
    *, uow: UnitOfWork, project: Project, service: ModelService, row: ServiceVersion
) -> VersionRead:
    aliases = (await uow.session.exec(select(Alias.name).where(Alias.version_id == row.id))).all()
    return VersionRead(
        id=row.id,
        project=project.name,
        service=service.name,
        version=row.version,
        state=row.state,
        state_detail=row.state_detail,
        api_version=row.api_version,
        bundle_sha256=row.bundle_sha256,
        bundle_size=row.bundle_size,
        interface=ModelManifest.model_validate(row.interface),
        interface_warnings=row.interface_warnings,
        build_spec=BuildSpec.model_validate(row.build_spec),
        replicas=[Replica.model_validate(r) for r in row.replicas],
        aliases=sorted(aliases),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _find(*, uow: UnitOfWork, service: ModelService, version: str) -> ServiceVersion | None:
    query = select(ServiceVersion).where(
        ServiceVersion.service_id == service.id, ServiceVersion.version == version
    )
    return (await uow.session.exec(query)).first()


async def _step(
    *,
    uow: UnitOfWork,
    user: User,
    where: tuple[str, str, str],
    allowed: frozenset[VersionState],
    action: str,
    state: VersionState,
) -> tuple[Project, ModelService, ServiceVersion]:
    """A lifecycle request: write access, a state it may start from, the new state."""
    project_name, service_name, version = where
    project, service, row = await get_version_for(
        uow=uow,
        user=user,
        project_name=project_name,
        service_name=service_name,
        version=version,
        needed=Role.WRITE,
    )
    _require(row, allowed, action)
    _move(row, state)
    return project, service, row


async def _commit(
    *, uow: UnitOfWork, project: Project, service: ModelService, row: ServiceVersion
) -> VersionRead:
    await uow.commit()
    return await to_read(uow=uow, project=project, service=service, row=row)


def _require(row: ServiceVersion, allowed: frozenset[VersionState], action: str) -> None:
    if row.state not in allowed:
        states = ", ".join(sorted(allowed))
        raise Conflict(
            f"cannot {action} version {row.version!r}: it is {row.state}; "
            f"{action} needs one of: {states}"
        )


def _move(row: ServiceVersion, state: VersionState, detail: str | None = None) -> None:
    row.state = state
    row.state_detail = detail
    row.updated_at = datetime.now(UTC)
