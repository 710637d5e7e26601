"""FastAPI dependencies of the metrics service."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.runtime import state_of
from services.metrics.state import MetricsState

Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
StateDep = Annotated[MetricsState, Depends(state_of(MetricsState))]


async def session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.database.session() as value:
        yield value


SessionDep = Annotated[AsyncSession, Depends(session)]
