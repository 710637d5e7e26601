"""Where the real-stack tests find PostgreSQL and RabbitMQ; a fresh database per test, and
a broker that accepts connections before each test that needs it."""

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal
from urllib.parse import urlsplit

import pytest

from modelcloud_proto.events import CONSUMER_QUEUES
from modelcloud_testing.polling import wait_until

POSTGRES = os.environ.get("MODELCLOUD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
RABBITMQ = os.environ.get("MODELCLOUD_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")


async def postgres_databases(action: Literal["create", "drop"], names: list[str]) -> None:
    """Create or drop PostgreSQL databases (dropping one that is in use, or gone, is fine)."""
    import asyncpg

    admin = await asyncpg.connect(f"{POSTGRES}/postgres")
    try:
        for name in names:
            if action == "create":
                await admin.execute(f'CREATE DATABASE "{name}"')
            else:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new PostgreSQL database (its SQLAlchemy URL), dropped afterwards; its random name
    keeps parallel test processes apart."""
    name = f"mc_test_{uuid.uuid4().hex[:12]}"
    await postgres_databases("create", [name])
    try:
        yield f"postgresql+asyncpg://{POSTGRES.split('://', 1)[1]}/{name}"
    finally:
        await postgres_databases("drop", [name])


def _broker_accepts() -> bool:
    address = urlsplit(RABBITMQ)
    try:
        with socket.create_connection((address.hostname, address.port or 5672), timeout=1):
            return True
    except OSError:
        return False


async def _drop_service_queues() -> None:
    """The services' queues (and their dead letters) go: every bus declares them at start,
    so what an earlier test published waits there for the next test's consumers."""
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ)
    try:
        channel = await connection.channel()
        for queue in CONSUMER_QUEUES:
            for name in (queue, f"{queue}.dlq"):
                await channel.queue_delete(name)
    finally:
        await connection.close()


@pytest.fixture(autouse=True)
def rabbitmq_accepting(request: pytest.FixtureRequest) -> None:
    """Before a ``rabbitmq`` test: the broker is back from a restart an earlier test made
    (``rabbitmqctl stop_app``/``start_app``; its listener opens a moment after the command
    returns, and a busy machine makes that moment longer), with none of the services'
    queues (the ``rabbitmq`` tests run one at a time, ``workers.py``)."""
    if request.node.get_closest_marker("rabbitmq") is not None:
        wait_until(_broker_accepts, timeout=60, what="RabbitMQ accepting connections")
        asyncio.run(_drop_service_queues())
