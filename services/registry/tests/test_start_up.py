"""The registry's start-up on the service runtime: it starts with the broker or the
database away (and says so in /readyz), and its replicas migrate once, under a lock."""

import asyncio
import fcntl
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text

from modelcloud_testing.servers import fresh_postgres_database
from services.common.database import create_engine
from services.common.migrations import upgrade
from services.registry.main import MIGRATIONS as REGISTRY_MIGRATIONS
from services.registry.main import create_app as registry_app
from services.registry.settings import RegistrySettings


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        yield client


async def test_the_registry_starts_with_the_broker_down_and_readyz_names_the_bus(
    tmp_path: Path,
) -> None:
    """It used to exit (uvicorn's exit code 3): the lifespan raised BusUnavailable."""
    settings = RegistrySettings(
        data_dir=tmp_path,
        broker_url=SecretStr(f"amqp://guest:guest@127.0.0.1:{closed_port()}/"),
    )
    async with serving(registry_app(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert set(ready.json()["failing"]) == {"event-bus", "consumer-registry"}
        # What needs only the database works meanwhile.
        assert (await client.get("/v1/projects")).status_code == 401


@pytest.mark.postgres
async def test_the_registry_starts_with_the_database_down_and_answers_503(
    tmp_path: Path,
) -> None:
    settings = RegistrySettings(
        data_dir=tmp_path,
        database_url=SecretStr(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/x"),
    )
    async with serving(registry_app(settings)) as client:
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
            await asyncio.wait_for(asyncio.gather(*migrations), 30)
            async with engines[0].connect() as connection:
                versions = await connection.execute(text("SELECT count(*) FROM alembic_version"))
                assert versions.scalar_one() == 1
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
        await asyncio.sleep(0.2)
        assert not waiting.done()
        fcntl.flock(lock, fcntl.LOCK_UN)
        await asyncio.wait_for(waiting, 30)
    finally:
        os.close(lock)
        await engine.dispose()
