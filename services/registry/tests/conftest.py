"""Registry test fixtures: a real app (lifespan, migrations, bus, relay) per test, on
SQLite with the local bus, or a fresh PostgreSQL database for the marked tests."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelcloud_testing.registries import Registry, running_registry
from modelcloud_testing.servers import fresh_postgres_database
from services.common.events.local import LocalBus
from services.registry.settings import RegistrySettings


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    settings = RegistrySettings(data_dir=tmp_path, outbox_poll_interval_s=0.05)
    bus = LocalBus(tmp_path / "events.db")
    await bus.start()
    try:
        async with running_registry(settings, bus) as running:
            yield running
    finally:
        await bus.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    async with fresh_postgres_database() as url:
        yield url
