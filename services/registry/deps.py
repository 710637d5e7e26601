"""FastAPI dependencies: the registry's state, the request's unit of work, the calling user,
the settings."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.routing import APIRoute

from services.common.problems import Forbidden
from services.common.runtime import state_of
from services.registry.accounts.models import User
from services.registry.accounts.service import authenticate
from services.registry.accounts.service_roles import may_call
from services.registry.settings import RegistrySettings
from services.registry.state import RegistryState
from services.registry.unit_of_work import UnitOfWork

StateDep = Annotated[RegistryState, Depends(state_of(RegistryState))]


async def unit_of_work(request: Request, state: StateDep) -> AsyncIterator[UnitOfWork]:
    async with state.database.session() as session:
        yield UnitOfWork(
            session=session,
            relay=state.relay,
            correlation_id=getattr(request.state, "correlation_id", None),
        )


UnitOfWorkDep = Annotated[UnitOfWork, Depends(unit_of_work)]


async def current_user(
    request: Request,
    uow: UnitOfWorkDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> User:
    """The caller; a platform service's account only on the routes its role lists (403
    elsewhere), before the route does anything."""
    user = await authenticate(session=uow.session, authorization=authorization)
    if user.service_role is not None:
        route = request.scope.get("route")
        template = route.path if isinstance(route, APIRoute) else None
        if not may_call(user.service_role, request.method, template):
            raise Forbidden(
                f"the {user.service_role} service account may not call "
                f"{request.method} {template or request.url.path}"
            )
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def settings(state: StateDep) -> RegistrySettings:
    return state.settings


SettingsDep = Annotated[RegistrySettings, Depends(settings)]
