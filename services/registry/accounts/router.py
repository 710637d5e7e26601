"""``/v1/me``, ``/v1/users`` (admins), ``/v1/tokens``."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, status

from services.common.problems import Forbidden, conflict
from services.registry.accounts import service
from services.registry.accounts.models import (
    TokenCreate,
    TokenIssued,
    TokenRead,
    UserCreate,
    UserRead,
)
from services.registry.deps import CurrentUser, UnitOfWorkDep
from services.registry.names import Name

router = APIRouter(prefix="/v1", tags=["accounts"])


@router.get("/me")
async def me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user, from_attributes=True)


@router.post("/users", status_code=status.HTTP_201_CREATED, responses=conflict("the name is taken"))
async def create_user(data: UserCreate, user: CurrentUser, uow: UnitOfWorkDep) -> UserRead:
    if not user.is_admin:
        raise Forbidden("only admins create users")
    created = await service.create_user(
        session=uow.session,
        name=data.name,
        is_admin=data.is_admin,
        service_role=data.service_role,
    )
    await uow.commit()
    return UserRead.model_validate(created, from_attributes=True)


@router.post("/users/{name}/tokens", status_code=status.HTTP_201_CREATED)
async def issue_token_for(
    name: Name, user: CurrentUser, uow: UnitOfWorkDep, data: Annotated[TokenCreate, Body()]
) -> TokenIssued:
    if not user.is_admin and user.name != name:
        raise Forbidden("only admins issue tokens for other users")
    target = await service.get_user_by_name_or_raise(session=uow.session, name=name)
    issued = await service.issue_token(
        session=uow.session, user=target, name=data.name, expires_in_days=data.expires_in_days
    )
    await uow.commit()
    return issued


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def issue_token(data: TokenCreate, user: CurrentUser, uow: UnitOfWorkDep) -> TokenIssued:
    issued = await service.issue_token(
        session=uow.session, user=user, name=data.name, expires_in_days=data.expires_in_days
    )
    await uow.commit()
    return issued


@router.get("/tokens")
async def list_tokens(user: CurrentUser, uow: UnitOfWorkDep) -> list[TokenRead]:
    return await service.list_tokens(session=uow.session, user=user)


@router.delete("/tokens/{token_id}")
async def revoke_token(token_id: UUID, user: CurrentUser, uow: UnitOfWorkDep) -> TokenRead:
    revoked = await service.revoke_token(session=uow.session, user=user, token_id=token_id)
    await uow.commit()
    return revoked
