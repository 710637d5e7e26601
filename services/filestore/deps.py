"""FastAPI dependencies of the file store."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.access import access_to

__all__ = ["SessionDep", "access_to"]


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as value:
        yield value


SessionDep = Annotated[AsyncSession, Depends(session)]
