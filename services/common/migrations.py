"""Alembic migrations per service, applied at start.

Each service keeps its scripts in ``services/<name>/migrations/`` with an ``env.py`` that
calls :func:`run_migrations` with its metadata; :func:`upgrade` runs them on the service's
own async engine, so start-up needs no separate ``alembic`` command.
"""

from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData
from sqlalchemy.ext.asyncio import AsyncEngine


async def upgrade(engine: AsyncEngine, script_location: Path, revision: str = "head") -> None:
    """Bring the service's database to ``revision``."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, config, revision)


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
