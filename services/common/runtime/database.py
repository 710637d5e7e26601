"""The service's database as a part of its runtime: the engine, its sessions, and a
session for request handlers that is a 503 problem, not a 500, while the database is away."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.database import SessionFactory, session_factory
from services.common.problems import ServiceUnavailable
from services.common.runtime.parts import Part

DATABASE = "database"


class Database:
    """``sessions`` for workers and consumers (which start only once the database is up);
    :meth:`session` for request handlers."""

    def __init__(self, engine: AsyncEngine, part: Part) -> None:
        self.engine = engine
        self.sessions: SessionFactory = session_factory(engine)
        self.part = part

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        self.part.require()
        async with self.sessions() as session:
            try:
                yield session
            except (sa_exc.OperationalError, sa_exc.InterfaceError, OSError) as exc:
                if not _lost_connection(exc):
                    raise
                raise ServiceUnavailable("the database cannot be reached; try again") from None

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))


def _lost_connection(exc: BaseException) -> bool:
    """A connection refused or dropped (the database is away: the client may try again), as
    opposed to an error in the statement or the schema, which stays a 500."""
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc.orig, OSError):
            return True
        # SQLite's "unable to open database file" / "disk I/O error" and the like.
        return isinstance(exc, sa_exc.OperationalError) and "unable to open" in str(exc.orig)
    return False
