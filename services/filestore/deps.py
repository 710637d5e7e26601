"""FastAPI dependencies of the file store."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.access import access_to
from services.common.runtime import state_of
from services.filestore.state import FilestoreState

__all__ = ["SessionDep", "StateDep", "access_to"]

StateDep = Annotated[FilestoreState, Depends(state_of(FilestoreState))]


async def session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.database.session() as value:
        yield value


SessionDep = Annotated[AsyncSession, Depends(session)]
