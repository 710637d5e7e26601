"""FastAPI dependencies of the metrics service."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlmodel.ext.asyncio.session import AsyncSession

Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as value:
        yield value


SessionDep = Annotated[AsyncSession, Depends(session)]
