"""Publishing starts health-checked replicas; a killed one comes back and is reported; a
model whose setup raises fails clearly; offline and builder restarts leave exactly the
replicas that should run, and none of them sees a platform secret."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest

from modelcloud_proto.events import Envelope, ReplicaRestarted
from modelcloud_proto.specs import Device
from modelcloud_testing.deployments import build, greet, pid_on_port, publish, replica_processes
from modelcloud_testing.platforms import SERVICE, Platform, greeter, running_builder
from modelcloud_testing.polling import wait_for
from modelcloud_testing.registries import Registry
from services.builder.backends.venv import OWNER_MARK, REPLICA_MARK
from services.builder.settings import BuilderSettings

pytestmark = pytest.mark.timeout(600)


async def test_replicas_serve_and_a_killed_one_comes_back(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDER_REGISTRY_TOKEN", "secret-that-must-not-leak")
    assert (await build(platform, "1.0", greeter("hello")))["state"] == "built"
    online = await publish(platform, "1.0", replicas=2)
    assert online["state"] == "online", online["state_detail"]
    assert online["api_version"] == 1
    replicas = online["replicas"]
    assert len(replicas) == 2
    assert {r["pool"] for r in replicas} == {"cpu"}
    for replica in replicas:
        assert await greet(replica["address"], "ada") == "hello, ada"

    owner = platform.settings.replica_owner()
    for env in replica_processes(owner).values():  # model code sees no platform setting
        assert not any(k.startswith(("BUILDER_", "REGISTRY_", "FILESTORE_")) for k in env)
        assert "secret-that-must-not-leak" not in "".join(env.values())

    # What the event stream shows: every builder.replica.* event, as a consumer sees it.
    replica_events: list[Envelope] = []

    async def record(envelope: Envelope) -> None:
        replica_events.append(envelope)

    await platform.registry.bus.subscribe("test-replica-events", ["builder.replica.*"], record)

    victim = replicas[0]["address"]
    os.kill(pid_on_port(int(victim.rsplit(":", 1)[1])), signal.SIGKILL)

    async def restarted() -> list[dict[str, Any]]:
        (deployment,) = await platform.deployments()
        return [r for r in deployment["replicas"] if r["restarts"] == 1 and r["ready"]]

    (fresh,) = await wait_for(restarted)

    assert fresh["address"] == victim  # back on its port: the address does not change

    async def registry_knows() -> bool:  # reported once it answers /healthz
        listed = (await platform.version("1.0"))["replicas"]
        return fresh["address"] in [r["address"] for r in listed]

    await wait_for(registry_knows)
    assert await greet(fresh["address"], "grace") == "hello, grace"

    async def reported() -> list[Envelope]:
        return replica_events

    (envelope,) = await wait_for(reported)
    assert envelope.type == "builder.replica.restarted"
    assert envelope.producer == "builder"
    event = envelope.event()
    assert isinstance(event, ReplicaRestarted)
    assert event.version_id == UUID(online["id"])
    assert event.replica.address == fresh["address"]
    assert event.replica.pool is Device.CPU
    assert event.previous_address == victim
    assert event.restarts == 1
    assert event.reason == "its process exited"
    await platform.registry.bus.unsubscribe("test-replica-events")

    offline = await platform.registry.client.post(f"{SERVICE}/versions/1.0/offline")
    assert offline.status_code == 202

    async def all_stopped() -> bool:
        (deployment,) = await platform.deployments()
        return deployment["state"] == "stopped" and not replica_processes(owner)

    await wait_for(all_stopped)


async def test_a_model_whose_setup_raises_fails_to_publish_with_its_log_lines(
    platform: Platform,
) -> None:
    assert (await build(platform, "1.0", greeter(fail_setup="x")))["state"] == "built"
    failed = await publish(platform, "1.0")
    assert failed["state"] == "publish_failed"
    assert "the weights file is corrupt" in failed["state_detail"]
    assert not replica_processes(platform.settings.replica_owner())


async def test_a_restarted_builder_keeps_exactly_the_replicas_that_should_run(
    registry: Registry, builder_settings: Callable[..., BuilderSettings]
) -> None:
    # The first builder leaves its replicas running when it stops, as after a crash.
    first = builder_settings(registry_token=registry.admin_token, stop_replicas_on_exit=False)
    async with running_builder(first, registry) as (app, client):
        platform = Platform(registry, app, client, first)
        assert (await build(platform, "1.0", greeter("hello")))["state"] == "built"
        online = await publish(platform, "1.0")
    address = online["replicas"][0]["address"]
    kept = pid_on_port(int(address.rsplit(":", 1)[1]))
    owner = replica_processes()[kept][OWNER_MARK]

    # A stray replica of this builder that nothing wants (as if it crashed right after
    # starting one): the next start must stop it.
    stray = subprocess.Popen(  # noqa: ASYNC220 - the test's own stray process
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={REPLICA_MARK: "6f1f7d1e-0000-4000-8000-000000000000", OWNER_MARK: owner},
        start_new_session=True,
    )
    try:
        second = builder_settings(registry_token=registry.admin_token)
        async with running_builder(second, registry) as (_, client):

            async def stray_stopped() -> bool:
                return stray.poll() is not None

            await wait_for(stray_stopped, timeout=30)
            assert list(replica_processes(owner)) == [kept]  # adopted, not restarted
            assert await greet(address, "linus") == "hello, linus"
            (deployment,) = (await client.get("/v1/projects/vision/deployments")).json()
            assert deployment["state"] == "ready"
            assert [r["address"] for r in deployment["replicas"]] == [address]
        assert not replica_processes(owner)  # this one stops its replicas on exit
    finally:
        stray.kill()
        stray.wait()
