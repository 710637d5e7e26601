"""``/v1/projects/{project}/services``: register and describe model services."""

from fastapi import APIRouter, status

from services.common.problems import conflict
from services.registry.deps import CurrentUser, SettingsDep, UnitOfWorkDep
from services.registry.model_services import service
from services.registry.model_services.models import ServiceCreate, ServiceRead, ServiceUpdate
from services.registry.names import Name

router = APIRouter(prefix="/v1/projects/{project}/services", tags=["services"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=conflict("the name or the port is taken"),
)
async def register_service(
    project: Name,
    data: ServiceCreate,
    user: CurrentUser,
    uow: UnitOfWorkDep,
    settings: SettingsDep,
) -> ServiceRead:
    return await service.register_service(
        uow=uow, user=user, project_name=project, data=data, settings=settings
    )


@router.get("")
async def list_services(project: Name, user: CurrentUser, uow: UnitOfWorkDep) -> list[ServiceRead]:
    return await service.list_services(uow=uow, user=user, project_name=project)


@router.get("/{name}")
async def get_service(
    project: Name, name: Name, user: CurrentUser, uow: UnitOfWorkDep
) -> ServiceRead:
    return await service.read_service(uow=uow, user=user, project_name=project, name=name)


@router.patch("/{name}")
async def update_service(
    project: Name, name: Name, data: ServiceUpdate, user: CurrentUser, uow: UnitOfWorkDep
) -> ServiceRead:
    return await service.update_service(
        uow=uow, user=user, project_name=project, name=name, data=data
    )
