"""``/v1/projects``: projects, members, service groups."""

from fastapi import APIRouter, status

from services.common.problems import conflict
from services.registry.deps import CurrentUser, UnitOfWorkDep
from services.registry.names import Name
from services.registry.projects import service
from services.registry.projects.models import (
    GroupCreate,
    GroupRead,
    MembershipRead,
    MembershipSet,
    ProjectCreate,
    ProjectRead,
    ProjectUpdate,
)

router = APIRouter(prefix="/v1/projects", tags=["projects"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=conflict("the name is taken"))
async def create_project(data: ProjectCreate, user: CurrentUser, uow: UnitOfWorkDep) -> ProjectRead:
    return await service.create_project(uow=uow, user=user, data=data)


@router.get("")
async def list_projects(user: CurrentUser, uow: UnitOfWorkDep) -> list[ProjectRead]:
    return await service.list_projects(uow=uow, user=user)


@router.get("/{project}")
async def get_project(project: Name, user: CurrentUser, uow: UnitOfWorkDep) -> ProjectRead:
    found, role = await service.get_project_for(uow=uow, user=user, name=project)
    return ProjectRead(**found.model_dump(), role=role)


@router.patch("/{project}")
async def update_project(
    project: Name, data: ProjectUpdate, user: CurrentUser, uow: UnitOfWorkDep
) -> ProjectRead:
    return await service.update_project(uow=uow, user=user, name=project, data=data)


@router.get("/{project}/members")
async def list_members(
    project: Name, user: CurrentUser, uow: UnitOfWorkDep
) -> list[MembershipRead]:
    return await service.list_members(uow=uow, user=user, project_name=project)


@router.put(
    "/{project}/members/{member}",
    responses=conflict("the change would leave the project without an admin"),
)
async def set_member(
    project: Name, member: Name, data: MembershipSet, user: CurrentUser, uow: UnitOfWorkDep
) -> MembershipRead:
    return await service.set_member(
        uow=uow, user=user, project_name=project, member=member, role=data.role
    )


@router.post(
    "/{project}/groups",
    status_code=status.HTTP_201_CREATED,
    responses=conflict("the name is taken"),
)
async def create_group(
    project: Name, data: GroupCreate, user: CurrentUser, uow: UnitOfWorkDep
) -> GroupRead:
    group = await service.create_group(uow=uow, user=user, project_name=project, data=data)
    return GroupRead.model_validate(group, from_attributes=True)


@router.get("/{project}/groups")
async def list_groups(project: Name, user: CurrentUser, uow: UnitOfWorkDep) -> list[GroupRead]:
    groups = await service.list_groups(uow=uow, user=user, project_name=project)
    return [GroupRead.model_validate(g, from_attributes=True) for g in groups]
