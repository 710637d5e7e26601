"""Alembic migrations per service, applied at start.

Each service keeps its scripts in ``services/<name>/migrations/`` with an ``env.py`` that
calls :func:`run_migrations` with its metadata; :func:`upgrade` runs them on the service's
own async engine, so start-up needs no separate ``alembic`` command.

Several replicas of a service may start together: each applies the migrations under a lock
(PostgreSQL: an advisory lock per service, held for the migration's transaction; SQLite: an
exclusive ``flock`` on a file beside the database), so one applies them and the others then
find the schema current. Without it two replicas both create the same tables and one fails.
"""

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# How often a replica waiting for another's SQLite migration looks again (flock has no
# asynchronous wait; a thread blocked in flock could not be cancelled at shut-down).
_LOCK_POLL_S = 0.05


async def upgrade(
    engine: AsyncEngine,
    script_location: Path,
    revision: str = "head",
) -> None:
    """Bring the service's database to ``revision``, one replica at a time (the lock is
    named after the folder holding ``script_location``: the service)."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    name = script_location.parent.name
    async with _sqlite_file_lock(engine, name), engine.begin() as connection:
        await _postgres_lock(connection, name)
        await connection.run_sync(_upgrade, config, revision)


def advisory_key(name: str, *, namespace: str = "modelcloud.migrations") -> int:
    """A PostgreSQL advisory lock key: a signed 64-bit number from ``name`` (by default a
    service's migrations; another user of advisory locks names its own ``namespace``)."""
    digest = hashlib.sha256(f"{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _postgres_lock(connection: AsyncConnection, name: str) -> None:
    if connection.dialect.name == "postgresql":
        # Released with the transaction, committed or not, and with a lost connection.
        statement = text("SELECT pg_advisory_xact_lock(:key)")
        await connection.execute(statement, {"key": advisory_key(name)})


@contextlib.asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine, name: str) -> AsyncIterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # not SQLite, or a database no other process can open
        return
    path = Path(database).with_name(f"{Path(database).name}.{name}.migrations.lock")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def run_migrations(target_metadata: MetaData, **configure: Any) -> None:
    """The body of every service's ``env.py`` (online mode only: we always have a database)."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through services.common.migrations.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        **configure,
    )
    with context.begin_transaction():
        context.run_migrations()
