"""FastAPI dependencies of the builder."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path
from sqlmodel.ext.asyncio.session import AsyncSession

from services.builder.state import BuilderState
from services.common.access import access_to
from services.common.runtime import state_of

__all__ = ["Name", "SessionDep", "StateDep", "access_to"]

Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
StateDep = Annotated[BuilderState, Depends(state_of(BuilderState))]


async def session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.database.session() as value:
        yield value


SessionDep = Annotated[AsyncSession, Depends(session)]
