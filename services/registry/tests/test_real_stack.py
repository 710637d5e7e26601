"""The registry on the real servers: PostgreSQL for state, RabbitMQ for events.

These tests stop and start the RabbitMQ application on this machine (``rabbitmqctl``) to
show that an outage between commit and publish loses nothing.
"""

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import pytest
from sqlmodel import select

from modelcloud_proto.events import BuildSucceeded, DeploymentReady, Envelope, Replica
from modelcloud_proto.specs import Device
from modelcloud_testing.registries import Registry, make_service, running_registry, upload_version
from modelcloud_testing.servers import RABBITMQ
from services.common.database import SessionFactory
from services.common.events.bus import Handler
from services.common.events.consumer import EventHandler, idempotent
from services.common.events.outbox import OutboxEvent
from services.common.events.rabbitmq import RabbitBus
from services.common.runtime import service_state
from services.registry import consumers
from services.registry import main as registry_main
from services.registry.settings import RegistrySettings
from services.registry.state import RegistryState
from services.registry.tests.test_api import assert_problem
from services.registry.tests.test_lifecycle import (
    VERSIONS,
    as_builder,
    check_state_change_and_event_kept_or_lost_together,
    record,
    wait_state,
)
from services.registry.versions import service as version_service

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
async def real_registry(tmp_path: Path, postgres_url: str) -> AsyncIterator[Registry]:
    settings = RegistrySettings(
        data_dir=tmp_path,
        database_url=postgres_url,
        broker_url=RABBITMQ,
        outbox_poll_interval_s=0.05,
    )
    bus = RabbitBus(RABBITMQ)
    await bus.start()
    try:
        async with running_registry(settings, bus) as registry:
            yield registry
    finally:
        await bus.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def test_lifecycle_on_postgres_and_rabbitmq(real_registry: Registry) -> None:
    await make_service(real_registry.client)
    version_id = uuid.UUID((await upload_version(real_registry.client)).json()["id"])
    await real_registry.client.post(f"{VERSIONS}/1.0/build")
    await as_builder(
        real_registry, BuildSucceeded(version_id=version_id, build_id=uuid.uuid4(), artifact="x")
    )
    await wait_state(real_registry, "1.0", "built")


async def test_concurrent_registrations_on_postgres_give_one_409(real_registry: Registry) -> None:
    await make_service(real_registry.client, service="first")
    body = {"name": "twin", "group": "default"}
    responses = await asyncio.gather(
        *(real_registry.client.post("/v1/projects/vision/services", json=body) for _ in range(4))
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    for lost in (r for r in responses if r.status_code == 409):
        problem = assert_problem(lost, 409)
        assert problem["detail"] == "service 'twin' exists already in project 'vision'"
    listed = (await real_registry.client.get("/v1/projects/vision/services")).json()
    assert [s["name"] for s in listed] == ["first", "twin"]


async def test_concurrent_registrations_of_different_names_each_get_a_free_port(
    real_registry: Registry,
) -> None:
    await make_service(real_registry.client, service="first")
    responses = await asyncio.gather(
        *(
            real_registry.client.post(
                "/v1/projects/vision/services", json={"name": f"s{i}", "group": "default"}
            )
            for i in range(4)
        )
    )
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    ports = [r.json()["port"] for r in responses]
    assert len(set(ports)) == 4


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
async def test_broker_down_between_commit_and_publish_loses_no_event(
    real_registry: Registry,
) -> None:
    recorder = await record(real_registry)
    attempts_seen = 0

    async def count_attempts() -> None:
        nonlocal attempts_seen
        database = service_state(real_registry.app, RegistryState).database
        while True:
            async with database.session() as session:
                rows = (await session.exec(select(OutboxEvent))).all()
                attempts_seen = sum(
                    row.attempts
                    for row in rows
                    if row.type == "registry.project.created" and row.published_at is None
                )
            await asyncio.sleep(0.1)

    counting = asyncio.create_task(count_attempts())
    rabbitmqctl("stop_app")
    try:
        created = await real_registry.client.post("/v1/projects", json={"name": "during-outage"})
        assert created.status_code == 201  # the state change commits with its event
        # The relay tried, was refused, and recorded its attempt; nothing went out.
        await until(lambda: attempts_seen > 0)
        assert "registry.project.created" not in recorder.types()
    finally:
        counting.cancel()
        rabbitmqctl("start_app")
    (envelope,) = await recorder.wait_for("registry.project.created", timeout=60)
    assert envelope.data["name"] == "during-outage"


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_consumer_stopped_before_ack_gets_the_event_again_and_applies_it_once(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = RegistrySettings(
        data_dir=tmp_path,
        database_url=postgres_url,
        broker_url=RABBITMQ,
        outbox_poll_interval_s=0.05,
    )
    # Which envelopes the registry's consumer finished (and so acknowledged), in order.
    finished: list[uuid.UUID] = []

    def counting(consumer: str, sessions: SessionFactory, handler: EventHandler) -> Handler:
        apply_once = idempotent(consumer, sessions, handler)

        async def handle(envelope: Envelope) -> None:
            await apply_once(envelope)
            finished.append(envelope.id)

        return handle

    monkeypatch.setattr(registry_main, "idempotent", counting)

    first_bus = RabbitBus(RABBITMQ)
    await first_bus.start()
    async with running_registry(settings, first_bus) as registry:
        await make_service(registry.client)
        version_id = uuid.UUID((await upload_version(registry.client)).json()["id"])
        await registry.client.post(f"{VERSIONS}/1.0/build")
        await as_builder(
            registry, BuildSucceeded(version_id=version_id, build_id=uuid.uuid4(), artifact="x")
        )
        await wait_state(registry, "1.0", "built")
        await registry.client.post(f"{VERSIONS}/1.0/publish")

        started = asyncio.Event()

        async def hang(**_: object) -> None:
            started.set()
            await asyncio.sleep(3600)  # the consumer "dies" before it can ack

        ready = Envelope.of(
            DeploymentReady(
                version_id=version_id, replicas=[Replica(address="10.0.0.1:1", pool=Device.CPU)]
            ),
            producer="builder",
        )
        with monkeypatch.context() as dying:
            dying.setattr(version_service, "deployment_ready", hang)
            await first_bus.publish([ready])
            await asyncio.wait_for(started.wait(), 20)
            await first_bus.close()  # unacked: the broker will deliver it again
    assert ready.id not in finished

    second_bus = RabbitBus(RABBITMQ)
    await second_bus.start()
    try:
        async with running_registry(settings, second_bus) as again:
            online = await wait_state(again, "1.0", "online", timeout=30)
            assert online["api_version"] == 1
            await until(lambda: ready.id in finished)

            # Published again: the version waits for a DeploymentReady, so the old one would
            # bring it online as API version 2 if it were applied a second time.
            await again.client.post(f"{VERSIONS}/1.0/offline")
            publishing = await again.client.post(f"{VERSIONS}/1.0/publish")
            assert publishing.json()["state"] == "publishing"
            await second_bus.publish([ready])  # the broker delivers the same envelope again
            await until(lambda: finished.count(ready.id) == 2)
            version = (await again.client.get(f"{VERSIONS}/1.0")).json()
            assert (version["state"], version["api_version"]) == ("publishing", 1)
            service = (await again.client.get("/v1/projects/vision/services/classifier")).json()
            assert service["api_versions"] == 1

            # A new DeploymentReady does take effect: the state did allow one.
            await as_builder(
                again,
                DeploymentReady(
                    version_id=version_id,
                    replicas=[Replica(address="10.0.0.2:1", pool=Device.CPU)],
                ),
            )
            assert (await wait_state(again, "1.0", "online", timeout=30))["api_version"] == 2
    finally:
        await second_bus.close()


async def test_poison_and_failing_messages_land_in_the_dead_letter_queue(
    real_registry: Registry,
) -> None:
    marker = uuid.uuid4().hex
    connection = await aio_pika.connect(RABBITMQ)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("modelcloud.events")
        await exchange.publish(
            aio_pika.Message(body=f"not json {marker}".encode()),
            routing_key="builder.build.succeeded",
        )
        # A valid envelope whose payload does not validate fails every delivery.
        broken = Envelope.of(
            BuildSucceeded(version_id=uuid.uuid4(), build_id=uuid.uuid4(), artifact=marker),
            producer="builder",
        ).model_copy(update={"data": {"artifact": marker}})
        await exchange.publish(
            aio_pika.Message(body=broken.model_dump_json().encode()),
            routing_key="builder.build.succeeded",
        )

    async def both_dead() -> None:
        while True:
            bodies = [d.body for d in await real_registry.bus.dead_letters(consumers.QUEUE)]
            if sum(marker.encode() in body for body in bodies) == 2:
                return
            await asyncio.sleep(0.2)

    await asyncio.wait_for(both_dead(), 30)


async def test_state_change_and_event_are_kept_or_lost_together_on_postgres(
    real_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await check_state_change_and_event_kept_or_lost_together(real_registry, monkeypatch)
