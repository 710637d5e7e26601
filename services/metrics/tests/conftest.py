"""Metrics fixtures: a real registry (tokens, project roles) and the metrics service asking
it, both in-process; two members of project ``vision``, ``ada`` and ``grace``."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from modelcloud_testing.registries import Registry, make_service, running_registry
from services.common.events.local import LocalBus
from services.metrics.main import create_app
from services.metrics.settings import MetricsSettings
from services.registry.settings import RegistrySettings


@dataclass
class Tracker:
    registry: Registry
    ada: httpx.AsyncClient
    grace: httpx.AsyncClient
    settings: MetricsSettings
    app: FastAPI


async def tracker_on(tmp_path: Path, **settings: object) -> AsyncIterator[Tracker]:
    bus = LocalBus(tmp_path / "events.db")
    await bus.start()
    try:
        async with running_registry(RegistrySettings(data_dir=tmp_path / "registry"), bus) as reg:
            await make_service(reg.client)  # project "vision"
            tokens = {}
            for name in ("ada", "grace"):
                tokens[name] = await reg.user_token(name)
                added = await reg.client.put(
                    f"/v1/projects/vision/members/{name}", json={"role": "write"}
                )
                assert added.status_code == 200, added.text
            metrics_settings = MetricsSettings(data_dir=tmp_path / "metrics", **settings)  # type: ignore[arg-type]
            app = create_app(metrics_settings, registry_transport=httpx.ASGITransport(app=reg.app))

            def client(name: str) -> httpx.AsyncClient:
                return httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://metrics",
                    headers={"Authorization": f"Bearer {tokens[name]}"},
                )

            async with (
                app.router.lifespan_context(app),
                client("ada") as ada,
                client("grace") as grace,
            ):
                yield Tracker(reg, ada, grace, metrics_settings, app)
    finally:
        await bus.close()


@pytest.fixture
async def tracker(tmp_path: Path) -> AsyncIterator[Tracker]:
    async for value in tracker_on(tmp_path):
        yield value
