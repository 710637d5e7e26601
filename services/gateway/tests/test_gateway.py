"""Model calls through the gateway on real replicas: versioned URLs side by side, the newest
one, a version taken offline answering a clear 404, a restarted gateway routing at once,
tokens on every call, and the platform's APIs under the same origin."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelcloud_testing.deployments import build, publish
from modelcloud_testing.platforms import GREETER, SERVICE, Platform, greeter
from modelcloud_testing.polling import wait_for
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
        allowed_hosts=["gateway"],
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

        elsewhere = await gateway.get(f"{MODEL}/v1/meta", headers={"Host": "evil.example:80"})
        assert elsewhere.status_code == 400  # a name it is not reached by (DNS rebinding)
        assert "'evil.example'" in elsewhere.json()["detail"]

        document = (await gateway.get("/openapi.json")).json()  # the platform's, merged
        for path in (
            "/v1/projects",  # the registry's
            "/v1/projects/{project}/builds",  # the builder's
            "/models/{project}/{service}/v{api_version}/{command}",  # the gateway's own
        ):
            assert path in document["paths"], path
        assert "x-modelcloud-unavailable" in document  # no file store in this test
        assert {"BuildSpec", "AliasRead"} <= set(document["components"]["schemas"])
        docs = await gateway.get("/docs")
        assert docs.status_code == 200
        assert "/openapi.json" in docs.text
        assert "cdn" not in docs.text.lower()  # Swagger UI from here: works offline
        bundle = await gateway.get("/docs/assets/swagger-ui-bundle.js")
        assert bundle.status_code == 200
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert (await gateway.get("/docs/assets/..%2fdocs.py")).status_code == 404

        projects = await gateway.get("/v1/projects")  # the registry, through the front door
        assert [p["name"] for p in projects.json()] == ["vision"]
        builds = await gateway.get("/v1/projects/vision/builds")  # the builder
        assert len(builds.json()) == 2

    async with running_gateway(platform) as restarted:  # filled from the registry at start
        again = await greet(restarted, "v2/greet", "grace")
        assert again.json() == {"message": "bonjour, grace"}
        assert (await greet(restarted, "v1/greet", "grace")).status_code == 404


SLOW_GREETER = GREETER.replace(
    'if __name__ == "__main__":',
    """@modelcloud.command("slow", inputs={"name": text()}, outputs={"message": text()})
def slow(model, inputs):
    import time

    time.sleep(5)
    return {"message": inputs["name"]}


if __name__ == "__main__":""",
)


async def test_a_service_s_own_timeout_bounds_its_calls(platform: Platform) -> None:
    patched = await platform.registry.client.patch(
        SERVICE, json={"performance": {"device": "cpu", "timeout_s": 1}}
    )
    assert patched.status_code == 200, patched.text
    built = await build(platform, "1.0", greeter("hello", **{"cloud_model.py": SLOW_GREETER}))
    assert built["state"] == "built", built["state_detail"]
    assert (await publish(platform, "1.0"))["state"] == "online"
    async with running_gateway(platform) as gateway:
        started = time.monotonic()
        late = await greet(gateway, "v1/slow", "ada")
        waited = time.monotonic() - started
        assert late.status_code == 504
        assert late.headers["content-type"] == "application/problem+json"
        assert late.json()["detail"] == "greeter v1 did not answer within 1 s"
        assert waited < 4  # the service's 1 s, not the gateway's default of 120 s

        async def answers_again() -> bool:  # once the replica is done with the slow call
            return (await greet(gateway, "v1/greet", "ada")).status_code == 200

        await wait_for(answers_again, timeout=30)
