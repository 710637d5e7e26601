"""Projects and groups, and the access rule every route goes through: a project you are not
a member of does not exist for you (404); a role too low for the action is a 403."""

from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from modelcloud_proto.events import GroupCreated, ProjectCreated
from services.common.problems import Conflict, Forbidden, NotFound
from services.registry.accounts.models import User
from services.registry.accounts.service import get_user_by_name_or_raise
from services.registry.projects.models import (
    GroupCreate,
    Membership,
    MembershipRead,
    Project,
    ProjectCreate,
    ProjectRead,
    ProjectUpdate,
    Role,
    ServiceGroup,
)
from services.registry.unit_of_work import UnitOfWork


async def create_project(*, uow: UnitOfWork, user: User, data: ProjectCreate) -> ProjectRead:
    session = uow.session
    if (await session.exec(select(Project).where(Project.name == data.name))).first():
        raise Conflict(f"project {data.name!r} exists already")
    project = Project(**data.model_dump(), created_at=datetime.now(UTC))
    session.add(project)
    try:
        await session.flush()  # the project row first: the membership refers to it
    except IntegrityError:
        raise Conflict(f"project {data.name!r} exists already") from None
    session.add(Membership(project_id=project.id, user_id=user.id, role=Role.ADMIN))
    uow.emit(ProjectCreated(project_id=project.id, name=project.name))
    await uow.commit()
    return ProjectRead(**project.model_dump(), role=Role.ADMIN)


async def list_projects(*, uow: UnitOfWork, user: User) -> list[ProjectRead]:
    if user.is_admin:
        projects = (await uow.session.exec(select(Project).order_by(col(Project.name)))).all()
        return [ProjectRead(**p.model_dump(), role=Role.ADMIN) for p in projects]
    if user.service_role is not None:  # a platform service reads every project (deps.py)
        projects = (await uow.session.exec(select(Project).order_by(col(Project.name)))).all()
        return [ProjectRead(**p.model_dump(), role=Role.READ) for p in projects]
    query = (
        select(Project, Membership.role)
        .join(Membership)
        .where(Membership.user_id == user.id)
        .order_by(col(Project.name))
    )
    rows = await uow.session.exec(query)
    return [ProjectRead(**p.model_dump(), role=Role(role)) for p, role in rows]


async def get_project_for(
    *, uow: UnitOfWork, user: User, name: str, needed: Role = Role.READ
) -> tuple[Project, Role]:
    """The project named ``name`` if ``user`` may see it, with their role; else 404/403."""
    query = select(Project).where(Project.name == name)
    project = (await uow.session.exec(query)).first()
    if project is None:
        raise NotFound(f"no project {name!r}")
    if user.is_admin:
        return project, Role.ADMIN
    if user.service_role is not None:  # reads only, and only its role's routes (deps.py)
        if not Role.READ.allows(needed):
            raise Forbidden(f"a service account only reads; this needs the {needed} role")
        return project, Role.READ
    membership = await uow.session.get(Membership, (project.id, user.id))
    if membership is None:
        raise NotFound(f"no project {name!r}")
    if not membership.role.allows(needed):
        raise Forbidden(
            f"this needs the {needed} role on project {name!r}; you have {membership.role}"
        )
    return project, membership.role


async def update_project(
    *, uow: UnitOfWork, user: User, name: str, data: ProjectUpdate
) -> ProjectRead:
    project, role = await get_project_for(uow=uow, user=user, name=name, needed=Role.ADMIN)
    for key, value in data.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(project, key, value)
    await uow.commit()
    return ProjectRead(**project.model_dump(), role=role)


async def set_member(
    *, uow: UnitOfWork, user: User, project_name: str, member: str, role: Role
) -> MembershipRead:
    project, _ = await get_project_for(uow=uow, user=user, name=project_name, needed=Role.ADMIN)
    target = await get_user_by_name_or_raise(session=uow.session, name=member)
    existing = await uow.session.get(Membership, (project.id, target.id))
    if existing is None:
        uow.session.add(Membership(project_id=project.id, user_id=target.id, role=role))
    else:
        if existing.role == Role.ADMIN and role != Role.ADMIN:
            await _keep_an_admin(uow=uow, project=project, leaving=target.name)
        existing.role = role
    await uow.commit()
    return MembershipRead(user=target.name, role=role)


async def _keep_an_admin(*, uow: UnitOfWork, project: Project, leaving: str) -> None:
    """Refuse to take the admin role from the project's last admin: nobody could manage
    its members again. The admins' rows are locked (PostgreSQL) so that two admins
    demoting each other at once cannot both pass this check."""
    query = (
        select(Membership.user_id)
        .where(Membership.project_id == project.id, Membership.role == Role.ADMIN)
        .with_for_update()
    )
    if len((await uow.session.exec(query)).all()) <= 1:
        raise Conflict(
            f"{leaving} is the last admin of project {project.name!r}; "
            "make another member admin first"
        )


async def list_members(*, uow: UnitOfWork, user: User, project_name: str) -> list[MembershipRead]:
    project, _ = await get_project_for(uow=uow, user=user, name=project_name)
    query = (
        select(User.name, Membership.role)
        .join(Membership)
        .where(Membership.project_id == project.id)
        .order_by(col(User.name))
    )
    return [MembershipRead(user=name, role=role) for name, role in await uow.session.exec(query)]


async def create_group(
    *, uow: UnitOfWork, user: User, project_name: str, data: GroupCreate
) -> ServiceGroup:
    project, _ = await get_project_for(uow=uow, user=user, name=project_name, needed=Role.WRITE)
    if await find_group(uow=uow, project=project, name=data.name) is not None:
        raise Conflict(f"group {data.name!r} exists already in project {project.name!r}")
    group = ServiceGroup(**data.model_dump(), project_id=project.id, created_at=datetime.now(UTC))
    uow.session.add(group)
    uow.emit(GroupCreated(project_id=project.id, group_id=group.id, name=group.name))
    try:
        await uow.commit()
    except IntegrityError:
        raise Conflict(f"group {data.name!r} exists already in project {project.name!r}") from None
    return group


async def find_group(*, uow: UnitOfWork, project: Project, name: str) -> ServiceGroup | None:
    query = select(ServiceGroup).where(
        ServiceGroup.project_id == project.id, ServiceGroup.name == name
    )
    return (await uow.session.exec(query)).first()


async def list_groups(*, uow: UnitOfWork, user: User, project_name: str) -> list[ServiceGroup]:
    project, _ = await get_project_for(uow=uow, user=user, name=project_name)
    query = (
        select(ServiceGroup)
        .where(ServiceGroup.project_id == project.id)
        .order_by(col(ServiceGroup.name))
    )
    return list((await uow.session.exec(query)).all())
