"""Registering model services (with a port given or a free one assigned) and reading them."""

from datetime import UTC, datetime

from pydantic import HttpUrl
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from modelcloud_proto.events import ServiceRegistered, ServiceVisibilityChanged
from modelcloud_proto.specs import PerformanceNotes, ServiceLinks
from services.common.problems import Conflict, InvalidInput, NotFound, ServiceUnavailable
from services.registry.accounts.models import User
from services.registry.model_services.models import (
    ModelService,
    ServiceCreate,
    ServiceRead,
    ServiceUpdate,
)
from services.registry.projects.models import Project, Role, ServiceGroup
from services.registry.projects.service import find_group, get_project_for
from services.registry.settings import RegistrySettings
from services.registry.unit_of_work import UnitOfWork

# How many free ports one registration tries when concurrent ones take its pick first.
_ATTEMPTS = 5


async def register_service(
    *,
    uow: UnitOfWork,
    user: User,
    project_name: str,
    data: ServiceCreate,
    settings: RegistrySettings,
) -> ServiceRead:
    project, _ = await get_project_for(uow=uow, user=user, name=project_name, needed=Role.WRITE)
    group = await find_group(uow=uow, project=project, name=data.group)
    if group is None:
        raise InvalidInput("group", f"project {project.name!r} has no group {data.group!r}")
    if await find_service(uow=uow, project=project, name=data.name) is not None:
        raise Conflict(f"service {data.name!r} exists already in project {project.name!r}")
    if data.port is not None:
        _check_port(data.port, settings)
    port = data.port if data.port is not None else await _free_port(uow=uow, settings=settings)
    if data.port is not None and await _port_taken(uow=uow, port=data.port):
        raise Conflict(f"port {data.port} is taken by another service")
    service = ModelService(
        project_id=project.id,
        group_id=group.id,
        name=data.name,
        port=port,
        created_at=datetime.now(UTC),
        **data.model_dump(mode="json", exclude={"name", "group", "port"}),
    )
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with uow.session.begin_nested():
                uow.session.add(service)
        except IntegrityError as exc:
            # Registrations raced past the checks above and the database picked the winner
            # (on PostgreSQL; SQLite lets one writer in at a time). The name is the reason
            # whenever it is taken, whichever constraint fired first.
            if await find_service(uow=uow, project=project, name=data.name) is not None:
                raise Conflict(
                    f"service {data.name!r} exists already in project {project.name!r}"
                ) from None
            if "port" not in str(exc.orig).lower():
                raise
            if data.port is not None:
                raise Conflict(f"port {data.port} is taken by another service") from None
            if attempt == _ATTEMPTS:
                raise Conflict(f"port {service.port} was just taken; register again") from None
            # A free port we picked was taken meanwhile: the winner has committed, so the
            # next pick sees it.
            service.port = port = await _free_port(uow=uow, settings=settings)
        else:
            break
    uow.emit(
        ServiceRegistered(
            project=project.name,
            service_id=service.id,
            service=service.name,
            group=group.name,
            port=port,
            device=data.performance.device,
        )
    )
    await uow.commit()
    return to_read(service, project=project, group=group)


async def find_service(*, uow: UnitOfWork, project: Project, name: str) -> ModelService | None:
    query = select(ModelService).where(
        ModelService.project_id == project.id, ModelService.name == name
    )
    return (await uow.session.exec(query)).first()


async def get_service_for(
    *, uow: UnitOfWork, user: User, project_name: str, name: str, needed: Role = Role.READ
) -> tuple[Project, ModelService]:
    project, _ = await get_project_for(uow=uow, user=user, name=project_name, needed=needed)
    service = await find_service(uow=uow, project=project, name=name)
    if service is None:
        raise NotFound(f"no service {name!r} in project {project.name!r}")
    return project, service


async def list_services(*, uow: UnitOfWork, user: User, project_name: str) -> list[ServiceRead]:
    project, _ = await get_project_for(uow=uow, user=user, name=project_name)
    query = (
        select(ModelService, ServiceGroup)
        .join(ServiceGroup)
        .where(ModelService.project_id == project.id)
        .order_by(col(ModelService.name))
    )
    rows = await uow.session.exec(query)
    return [to_read(service, project=project, group=group) for service, group in rows]


async def read_service(*, uow: UnitOfWork, user: User, project_name: str, name: str) -> ServiceRead:
    project, service = await get_service_for(
        uow=uow, user=user, project_name=project_name, name=name
    )
    return to_read(service, project=project, group=await _group_of(uow=uow, service=service))


async def update_service(
    *, uow: UnitOfWork, user: User, project_name: str, name: str, data: ServiceUpdate
) -> ServiceRead:
    project, service = await get_service_for(
        uow=uow, user=user, project_name=project_name, name=name, needed=Role.WRITE
    )
    was_public = service.public
    for key, value in data.model_dump(mode="json", exclude_unset=True, exclude_none=True).items():
        setattr(service, key, value)
    if service.public != was_public:
        # Staged with the change itself: a gateway that missed it would keep answering the
        # service's calls for any token (or refuse them) until it restarted.
        uow.emit(
            ServiceVisibilityChanged(
                project=project.name,
                service_id=service.id,
                service=service.name,
                public=service.public,
            )
        )
    await uow.commit()
    return to_read(service, project=project, group=await _group_of(uow=uow, service=service))


def to_read(service: ModelService, *, project: Project, group: ServiceGroup) -> ServiceRead:
    return ServiceRead(
        id=service.id,
        project=project.name,
        group=group.name,
        name=service.name,
        port=service.port,
        api_versions=service.api_versions,
        tagline=service.tagline,
        description=service.description,
        gallery=[HttpUrl(url) for url in service.gallery],
        thumbnail=HttpUrl(service.gallery[0]) if service.gallery else None,
        license=service.license,
        performance=PerformanceNotes.model_validate(service.performance),
        links=ServiceLinks.model_validate(service.links),
        public=service.public,
        created_at=service.created_at,
    )


async def _group_of(*, uow: UnitOfWork, service: ModelService) -> ServiceGroup:
    group = await uow.session.get(ServiceGroup, service.group_id)
    if group is None:  # pragma: no cover - the foreign key forbids it
        raise NotFound(f"service {service.name!r} has lost its group")
    return group


def _platform_ports(settings: RegistrySettings) -> set[int]:
    """The all-in-one layout's own ports around the registry's (gateway N, registry N+1,
    builder, file store, metrics up to N+4), should `modelcloud up --port N` put them inside
    the replica range."""
    return set(range(settings.port - 1, settings.port + 4))


def _check_port(port: int, settings: RegistrySettings) -> None:
    """A service's replicas listen on its port, so it must be one the platform hands to
    replicas (the range in docs/ARCHITECTURE.md, 20000-29999 by default): never a port of
    the platform itself (the gateway, its services, PostgreSQL, RabbitMQ, S3), which a
    replica could otherwise take or be confused with."""
    low, high = settings.service_port_min, settings.service_port_max
    if not low <= port <= high:
        raise InvalidInput(
            "port", f"{port} is outside the service port range {low}-{high}; omit it to get one"
        )
    if port in _platform_ports(settings):
        raise InvalidInput("port", f"{port} is a port of the platform itself")


async def _port_taken(*, uow: UnitOfWork, port: int) -> bool:
    query = select(ModelService.id).where(ModelService.port == port)
    return (await uow.session.exec(query)).first() is not None


async def _free_port(*, uow: UnitOfWork, settings: RegistrySettings) -> int:
    taken = set(
        (
            await uow.session.exec(
                select(ModelService.port).where(
                    col(ModelService.port).between(
                        settings.service_port_min, settings.service_port_max
                    )
                )
            )
        ).all()
    )
    taken |= _platform_ports(settings)
    for port in range(settings.service_port_min, settings.service_port_max + 1):
        if port not in taken:
            return port
    raise ServiceUnavailable("every port in the service port range is taken")
