"""Issue 14: a call the gateway gives up on, or whose caller leaves, is cancelled on the
replica too (an ``async def`` command sees the cancellation, a call queued behind the
model's limit never runs), and ``model_calls_total`` labels each call with the status its
caller got: 504 for a timeout, 499 for a caller that left.

A tiny model served in-process by the SDK's server, and the gateway, both on real sockets
(only a real connection can close); the registry in-process checks the tokens."""

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest

from modelcloud import Model
from modelcloud._files import FilePolicy
from modelcloud._runtime import ModelRuntime
from modelcloud._server import create_app as create_model_app
from modelcloud.data_types import text
from modelcloud_proto.events import Envelope, Replica, VersionOnline
from modelcloud_proto.specs import Device
from modelcloud_testing.polling import came_true
from modelcloud_testing.registries import Registry
from modelcloud_testing.serving import leave_after_sending, listening
from services.gateway.main import create_app
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.timeout(120)
MODEL = "/models/vision/greeter/v1"


@dataclass
class Routed:
    gateway: httpx.AsyncClient  # the admin's calls through the gateway's socket
    port: int
    runtime: ModelRuntime
    version_id: UUID
    token: str

    def waiting(self) -> int:
        """Calls queued on the replica behind the model's concurrency limit."""
        return self.runtime._limiter.statistics().tasks_waiting

    async def calls_counted(self) -> str:
        metrics = await self.gateway.get("/metrics")
        return "\n".join(
            line for line in metrics.text.splitlines() if line.startswith("model_calls_total{")
        )

    def counted(self, status: int) -> str:
        return f'model_calls_total{{status="{status}",version_id="{self.version_id}"}} 1.0'


@asynccontextmanager
async def routed(
    registry: Registry, tmp_path: Path, model: Model, timeout_s: float
) -> AsyncIterator[Routed]:
    """``model`` as version 1.0 (v1) of vision/greeter, online behind a gateway, each call
    bounded by ``timeout_s`` (the service's performance notes)."""
    runtime = ModelRuntime(model, FilePolicy(roots=(tmp_path,)), scratch_dir=tmp_path)
    runtime.setup({})
    settings = GatewaySettings(
        data_dir=tmp_path / "gateway", registry_token=registry.admin_token, allowed_hosts=["*"]
    )
    app = create_app(
        settings,
        bus=registry.bus,
        transports={"registry": httpx.ASGITransport(app=registry.app)},
    )
    async with (
        listening(create_model_app(runtime)) as model_port,
        app.router.lifespan_context(app),
        listening(app) as port,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {registry.admin_token}"},
            timeout=30,
        ) as gateway,
    ):
        version_id = uuid4()
        online = VersionOnline(
            project="vision",
            service="greeter",
            version_id=version_id,
            version="1.0",
            api_version=1,
            replicas=[Replica(address=f"127.0.0.1:{model_port}", pool=Device.CPU)],
            device=Device.CPU,
            timeout_s=timeout_s,
            commands=sorted(model.commands),
        )
        await registry.bus.publish([Envelope.of(online, producer="registry")])
        for _ in range(500):  # the event reaches the gateway's routing table
            if (await gateway.get(f"{MODEL}/meta")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the gateway never routed the version")
        yield Routed(gateway, port, runtime, version_id, registry.admin_token)


async def test_a_timed_out_call_cancels_the_async_command_and_counts_as_504(
    registry: Registry, tmp_path: Path
) -> None:
    cancelled = asyncio.Event()
    model = Model()

    @model.command("wait", inputs={}, outputs={"done": text()})
    async def wait(_, inputs):
        try:
            await asyncio.Event().wait()  # only a cancellation ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"done": "never"}

    async with routed(registry, tmp_path, model, timeout_s=0.5) as route:
        late = await route.gateway.post(f"{MODEL}/wait", json={})
        assert late.status_code == 504, late.text
        await asyncio.wait_for(cancelled.wait(), 5)  # the model stopped working on it
        counted = await route.calls_counted()
        assert route.counted(504) in counted
        assert 'status="502"' not in counted  # a timeout is no bad gateway


async def test_a_call_queued_on_the_replica_when_it_timed_out_never_runs(
    registry: Registry, tmp_path: Path
) -> None:
    ran: list[str] = []
    started = threading.Event()
    release = threading.Event()
    model = Model()

    @model.command("work", inputs={"name": text()}, outputs={"done": text()})
    def work(_, inputs):
        ran.append(inputs["name"])
        if inputs["name"] == "a":
            started.set()
            release.wait(20)
        return {"done": inputs["name"]}

    async with routed(registry, tmp_path, model, timeout_s=1) as route:
        first = asyncio.create_task(route.gateway.post(f"{MODEL}/work", json={"name": "a"}))
        assert await asyncio.to_thread(started.wait, 10)
        queued = asyncio.create_task(route.gateway.post(f"{MODEL}/work", json={"name": "b"}))
        assert await came_true(lambda: route.waiting() == 1)  # b waits on the replica behind a
        assert (await queued).status_code == 504
        # The gateway closed b's connection: the replica lets b go while a still runs.
        left_the_queue = await came_true(lambda: route.waiting() == 0)
        release.set()
        assert (await first).status_code == 504  # a ran past its second as well
        after = await route.gateway.post(f"{MODEL}/work", json={"name": "c"})
        assert after.json() == {"done": "c"}
        assert ran == ["a", "c"]  # b's input never reached the model
        assert left_the_queue


async def test_a_caller_that_leaves_cancels_the_call_on_the_replica(
    registry: Registry, tmp_path: Path
) -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()
    model = Model()

    @model.command("wait", inputs={}, outputs={"done": text()})
    async def wait(_, inputs):
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"done": "never"}

    async with routed(registry, tmp_path, model, timeout_s=60) as route:
        writer = await leave_after_sending(
            route.port, f"{MODEL}/wait", b"{}", {"Authorization": f"Bearer {route.token}"}
        )
        await asyncio.wait_for(entered.wait(), 10)
        writer.close()  # long before the call's 60 s
        await writer.wait_closed()
        await asyncio.wait_for(cancelled.wait(), 5)
        assert await until_counted(route, 499)


async def until_counted(route: Routed, status: int) -> bool:
    for _ in range(250):
        if route.counted(status) in await route.calls_counted():
            return True
        await asyncio.sleep(0.02)
    return False
