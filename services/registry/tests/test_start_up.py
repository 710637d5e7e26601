"""The registry's start-up on the service runtime: it starts with the broker or the
database away (and says so in /readyz), and its replicas migrate once, under a lock."""

import asyncio
import contextlib
import fcntl
import os
import socket
import sqlite3
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from pydantic import SecretStr
from sqlalchemy import QueuePool, text

from modelcloud_testing.servers import fresh_postgres_database
from modelcloud_testing.serving import in_process
from services.common.database import create_engine
from services.common.migrations import upgrade
from services.registry.admin import create_admin_user
from services.registry.main import MIGRATIONS as REGISTRY_MIGRATIONS
from services.registry.main import create_app as registry_app
from services.registry.settings import RegistrySettings


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_the_registry_starts_with_the_broker_down_and_readyz_names_the_bus(
    tmp_path: Path,
) -> None:
    """It used to exit (uvicorn's exit code 3): the lifespan raised BusUnavailable."""
    settings = RegistrySettings(
        data_dir=tmp_path,
        broker_url=SecretStr(f"amqp://guest:guest@127.0.0.1:{closed_port()}/"),
    )
    admin = await create_admin_user(settings, "admin")
    async with in_process(registry_app(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert set(ready.json()["failing"]) == {"event-bus", "consumer-registry"}
        # What needs only the database works meanwhile: the token is looked up there.
        projects = await client.get("/v1/projects", headers={"Authorization": f"Bearer {admin}"})
        assert projects.status_code == 200, projects.text


@pytest.mark.postgres
async def test_the_registry_starts_with_the_database_down_and_answers_503(
    tmp_path: Path,
) -> None:
    settings = RegistrySettings(
        data_dir=tmp_path,
        database_url=SecretStr(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/x"),
    )
    async with in_process(registry_app(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        failing = ready.json()["failing"]
        assert "database" in failing
        assert "outbox-relay" in failing  # waits for the database
        needs_database = await client.get("/v1/projects", headers={"Authorization": "Bearer x"})
        assert needs_database.status_code == 503
        assert needs_database.headers["content-type"] == "application/problem+json"
        assert "database" in needs_database.json()["detail"]


@pytest.mark.postgres
async def test_replicas_starting_together_apply_the_migrations_once() -> None:
    """Without the lock both create the tables and one fails (duplicate table)."""
    async with fresh_postgres_database() as url:
        engines = [create_engine(url) for _ in range(4)]
        try:
            migrations = (upgrade(e, REGISTRY_MIGRATIONS) for e in engines)
            await asyncio.wait_for(asyncio.gather(*migrations), 30)  # none failed
            async with engines[0].connect() as connection:
                version = await connection.execute(text("SELECT version_num FROM alembic_version"))
                head = ScriptDirectory(str(REGISTRY_MIGRATIONS)).get_current_head()
                assert version.scalar_one() == head
        finally:
            for engine in engines:
                await engine.dispose()


async def test_a_replica_waits_for_the_one_migrating_an_sqlite_database(tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    lock = os.open(tmp_path / "registry.db.registry.migrations.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another replica is migrating
        waiting = asyncio.create_task(upgrade(engine, REGISTRY_MIGRATIONS))
        # Long enough for several looks at the lock. A migrator that ignored the lock
        # would be done by now or, if slow, would hold a connection to the database.
        await asyncio.sleep(0.2)
        assert not waiting.done()
        pool = engine.sync_engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.checkedout() == 0  # it never opened the database
        assert "alembic_version" not in tables_of(database)
        fcntl.flock(lock, fcntl.LOCK_UN)
        await asyncio.wait_for(waiting, 30)
        assert "alembic_version" in tables_of(database)
    finally:
        os.close(lock)
        await engine.dispose()


def tables_of(database: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}
