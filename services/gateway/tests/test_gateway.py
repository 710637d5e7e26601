"""Model calls through the gateway on real replicas: versioned URLs side by side, the newest
one, a version taken offline answering a clear 404, a restarted gateway routing at once,
tokens on every call, and the platform's APIs under the same origin."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.builder.tests.conftest import SERVICE, Platform, greeter
from services.builder.tests.test_builds import build
from services.builder.tests.test_deployments import publish, wait_for
from services.common.events.local import LocalBus
from services.gateway.main import create_app
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.timeout(600)
MODEL = "/models/vision/greeter"


@asynccontextmanager
async def running_gateway(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    registry = platform.registry
    settings = GatewaySettings(
        data_dir=platform.settings.data_dir.parent / "gateway",
        registry_token=registry.admin_token,
    )
    app: FastAPI = create_app(
        settings,
        bus=registry.bus,
        transports={
            "registry": httpx.ASGITransport(app=registry.app),
            "builder": httpx.ASGITransport(app=platform.builder_app),
        },
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {registry.admin_token}"},
            timeout=60,
        ) as client,
    ):
        yield client


async def greet(gateway: httpx.AsyncClient, path: str, name: str) -> httpx.Response:
    return await gateway.post(f"{MODEL}/{path}", json={"name": name})


async def test_versions_side_by_side_offline_and_a_restarted_gateway(platform: Platform) -> None:
    assert isinstance(platform.registry.bus, LocalBus)
    async with running_gateway(platform) as gateway:
        for version, greeting in (("1.0", "hello"), ("1.1", "bonjour")):
            assert (await build(platform, version, greeter(greeting)))["state"] == "built"
            online = await publish(platform, version)
            assert online["state"] == "online", online["state_detail"]

        async def routed() -> bool:
            return (await greet(gateway, "v2/greet", "x")).status_code == 200

        await wait_for(routed)
        first = await greet(gateway, "v1/greet", "ada")
        assert first.status_code == 200, first.text
        assert first.json() == {"message": "hello, ada"}
        assert first.headers["x-modelcloud-api-version"] == "1"
        second = await greet(gateway, "v2/greet", "ada")
        assert second.json() == {"message": "bonjour, ada"}
        newest = await greet(gateway, "greet", "ada")
        assert newest.json() == {"message": "bonjour, ada"}
        meta: dict[str, Any] = (await gateway.get(f"{MODEL}/v1/meta")).json()
        assert [c["name"] for c in meta["commands"]] == ["greet"]

        anonymous = await gateway.post(
            f"{MODEL}/v1/greet", json={"name": "x"}, headers={"Authorization": ""}
        )
        assert anonymous.status_code == 401
        stranger = await platform.registry.user_token("stranger")
        foreign = await gateway.post(
            f"{MODEL}/v1/greet", json={"name": "x"}, headers={"Authorization": f"Bearer {stranger}"}
        )
        assert foreign.status_code == 404

        bad_input = await gateway.post(f"{MODEL}/v1/greet", json={"nom": "x"})
        assert bad_input.status_code == 422  # the model's own problem+json comes through
        assert bad_input.headers["content-type"] == "application/problem+json"

        taken = await platform.registry.client.post(f"{SERVICE}/versions/1.0/offline")
        assert taken.status_code == 202

        async def v1_gone() -> bool:
            return (await greet(gateway, "v1/greet", "x")).status_code == 404

        await wait_for(v1_gone)
        gone = await greet(gateway, "v1/greet", "x")
        assert gone.headers["content-type"] == "application/problem+json"
        assert "v1 of vision/greeter is not online (online: v2)" in gone.json()["detail"]

        projects = await gateway.get("/v1/projects")  # the registry, through the front door
        assert [p["name"] for p in projects.json()] == ["vision"]
        builds = await gateway.get("/v1/projects/vision/builds")  # the builder
        assert len(builds.json()) == 2

    async with running_gateway(platform) as restarted:  # filled from the registry at start
        again = await greet(restarted, "v2/greet", "grace")
        assert again.json() == {"message": "bonjour, grace"}
        assert (await greet(restarted, "v1/greet", "grace")).status_code == 404
