"""FastAPI dependencies: the request's unit of work, the calling user, the settings."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request

from services.registry.accounts.models import User
from services.registry.accounts.service import authenticate
from services.registry.settings import RegistrySettings
from services.registry.unit_of_work import UnitOfWork


async def unit_of_work(request: Request) -> AsyncIterator[UnitOfWork]:
    state = request.app.state
    async with state.sessions() as session:
        yield UnitOfWork(
            session=session,
            relay=state.relay,
            correlation_id=getattr(request.state, "correlation_id", None),
        )


UnitOfWorkDep = Annotated[UnitOfWork, Depends(unit_of_work)]


async def current_user(
    uow: UnitOfWorkDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> User:
    return await authenticate(session=uow.session, authorization=authorization)


CurrentUser = Annotated[User, Depends(current_user)]


def settings(request: Request) -> RegistrySettings:
    value: RegistrySettings = request.app.state.settings
    return value


SettingsDep = Annotated[RegistrySettings, Depends(settings)]
