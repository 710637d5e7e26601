"""Issue 14: turning a service private (``PATCH .../services/{service}`` with
``public=false``) reaches a running gateway as ``registry.service.visibility_changed``, so
any valid token stops calling it at once, not after the gateway's next restart."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from modelcloud import Model
from modelcloud._files import FilePolicy
from modelcloud._runtime import ModelRuntime
from modelcloud._server import create_app as create_model_app
from modelcloud.data_types import text
from modelcloud_proto.events import (
    Envelope,
    Replica,
    ServiceVisibilityChanged,
    VersionOnline,
)
from modelcloud_proto.specs import Device
from modelcloud_testing.polling import wait_for
from modelcloud_testing.registries import Registry
from modelcloud_testing.serving import listening
from services.gateway import tables
from services.gateway.main import create_app
from services.gateway.routing import Route, RoutingTable
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.timeout(120)
SERVICE = "/v1/projects/vision/services/greeter"
GREET = "/models/vision/greeter/v1/greet"


# ----------------------------------------------------------------------------- the table


def route(service: str, api_version: int, public: bool) -> Route:
    return Route("vision", service, uuid4(), f"{api_version}.0", api_version, Device.CPU, public)


def visibility(service: str, public: bool) -> Envelope:
    changed = ServiceVisibilityChanged(
        project="vision", service_id=uuid4(), service=service, public=public
    )
    return Envelope.of(changed, producer="registry")


def public(table: RoutingTable, service: str, api_version: int | None) -> bool:
    found = table.find("vision", service, api_version)
    assert found is not None
    return found.public


def test_the_event_turns_every_version_of_that_service_only() -> None:
    table = RoutingTable(max_outstanding=4, eject_s=1)
    for routed in (route("greeter", 1, True), route("greeter", 2, True), route("other", 1, True)):
        table.online(routed, [])
    assert "registry.service.visibility_changed" in tables.PATTERNS
    for _ in range(2):  # applied twice: the same table
        tables.apply(table, visibility("greeter", public=False))
        assert [public(table, "greeter", v) for v in (1, 2)] == [False, False]
        assert public(table, "other", 1) is True
    tables.apply(table, visibility("greeter", public=True))
    assert public(table, "greeter", None) is True


# ----------------------------------------------------------------------------- end to end


@asynccontextmanager
async def gateway_for(registry: Registry, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A greeter replica (the SDK's server, in-process) routed as v1 of vision/greeter by a
    gateway on the registry's bus, which published it while the service was public."""
    model = Model()

    @model.command("greet", inputs={"name": text()}, outputs={"message": text()})
    def greet(_, inputs):
        return {"message": f"hello, {inputs['name']}"}

    runtime = ModelRuntime(model, FilePolicy(roots=(tmp_path,)), scratch_dir=tmp_path)
    runtime.setup({})
    settings = GatewaySettings(
        data_dir=tmp_path / "gateway", registry_token=registry.admin_token, allowed_hosts=["*"]
    )
    app = create_app(
        settings, bus=registry.bus, transports={"registry": httpx.ASGITransport(app=registry.app)}
    )
    async with (
        listening(create_model_app(runtime)) as model_port,
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
        ) as gateway,
    ):
        online = VersionOnline(
            project="vision",
            service="greeter",
            version_id=uuid4(),
            version="1.0",
            api_version=1,
            replicas=[Replica(address=f"127.0.0.1:{model_port}", pool=Device.CPU)],
            device=Device.CPU,
            public=True,
            commands=["greet"],
        )
        await registry.bus.publish([Envelope.of(online, producer="registry")])
        yield gateway


async def test_a_service_turned_private_refuses_outsiders_without_a_gateway_restart(
    registry: Registry, tmp_path: Path
) -> None:
    public = await registry.client.patch(SERVICE, json={"public": True})
    assert public.status_code == 200, public.text
    stranger = registry.as_user(await registry.user_token("stranger"))
    reader = registry.as_user(await registry.user_token("reader"))
    member = await registry.client.put("/v1/projects/vision/members/reader", json={"role": "read"})
    assert member.status_code == 200, member.text
    call = {"name": "ada"}

    async with gateway_for(registry, tmp_path) as gateway:

        async def stranger_gets(status: int) -> bool:
            return (await gateway.post(GREET, json=call, headers=stranger)).status_code == status

        await wait_for(lambda: stranger_gets(200), timeout=10)  # public: any valid token

        private = await registry.client.patch(SERVICE, json={"public": False})
        assert private.status_code == 200, private.text
        assert private.json()["public"] is False
        # The project stays hidden from the stranger: the same 404 as for any private one.
        await wait_for(lambda: stranger_gets(404), timeout=10)
        answered = await gateway.post(GREET, json=call, headers=reader)
        assert answered.status_code == 200, answered.text  # its readers still call it
        assert answered.json() == {"message": "hello, ada"}

        again = await registry.client.patch(SERVICE, json={"public": True})
        assert again.status_code == 200, again.text
        await wait_for(lambda: stranger_gets(200), timeout=10)
