"""Build and publish lifecycle, events through the outbox, and idempotent consumption, on
the embedded default (SQLite + the local bus). The builder is played by the test."""

import asyncio
import uuid
from typing import Any

from sqlmodel import select

from modelcloud_proto.events import (
    BuildFailed,
    BuildSucceeded,
    DeploymentFailed,
    DeploymentReady,
    Envelope,
    Event,
    ProjectCreated,
    Replica,
)
from modelcloud_proto.specs import Device
from services.common.events.outbox import OutboxEvent
from services.registry.tests.support import Registry, make_service, upload_version
from services.registry.unit_of_work import UnitOfWork

VERSIONS = "/v1/projects/vision/services/classifier/versions"


class Recorder:
    """A test consumer of the registry's own events."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def __call__(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def types(self) -> list[str]:
        return [e.type for e in self.envelopes]

    async def wait_for(
        self, event_type: str, count: int = 1, timeout: float = 10
    ) -> list[Envelope]:
        async def seen() -> list[Envelope]:
            while len(found := [e for e in self.envelopes if e.type == event_type]) < count:
                await asyncio.sleep(0.02)
            return found

        return await asyncio.wait_for(seen(), timeout)


async def record(registry: Registry) -> Recorder:
    recorder = Recorder()
    await registry.bus.subscribe(f"test-{uuid.uuid4().hex[:8]}", ["registry.#"], recorder)
    return recorder


async def as_builder(
    registry: Registry, event: Event, envelope_id: uuid.UUID | None = None
) -> None:
    envelope = Envelope.of(event, producer="builder")
    if envelope_id is not None:
        envelope = envelope.model_copy(update={"id": envelope_id})
    await registry.bus.publish([envelope])


async def wait_state(
    registry: Registry, version: str, state: str, timeout: float = 10
) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            body: dict[str, Any] = (await registry.client.get(f"{VERSIONS}/{version}")).json()
            if body["state"] == state:
                return body
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), timeout)


async def test_build_publish_offline_and_a_new_api_version_per_publish(registry: Registry) -> None:
    recorder = await record(registry)
    await make_service(registry.client, performance={"device": "cpu"})
    version = (await upload_version(registry.client)).json()
    version_id = uuid.UUID(version["id"])

    early = await registry.client.post(f"{VERSIONS}/1.0/publish")
    assert early.status_code == 409
    assert "it is registered" in early.json()["detail"]

    building = await registry.client.post(f"{VERSIONS}/1.0/build")
    assert building.status_code == 202
    assert building.json()["state"] == "building"
    (requested,) = await recorder.wait_for("registry.build.requested")
    assert requested.data["bundle_sha256"] == version["bundle_sha256"]
    assert requested.data["build_spec"]["concurrency"] == 4

    await as_builder(
        registry, BuildSucceeded(version_id=version_id, build_id=uuid.uuid4(), artifact="venv")
    )
    await wait_state(registry, "1.0", "built")

    publishing = await registry.client.post(f"{VERSIONS}/1.0/publish", json={"replicas": 2})
    assert publishing.json()["state"] == "publishing"
    (publish,) = await recorder.wait_for("registry.publish.requested")
    assert publish.data["replicas"] == 2
    assert publish.data["device"] == "cpu"

    replica = Replica(address="127.0.0.1:20001", pool=Device.CPU)
    await as_builder(registry, DeploymentReady(version_id=version_id, replicas=[replica]))
    online = await wait_state(registry, "1.0", "online")
    assert online["api_version"] == 1
    assert online["replicas"] == [{"address": "127.0.0.1:20001", "pool": "cpu"}]
    (went_online,) = await recorder.wait_for("registry.version.online")
    assert went_online.data["api_version"] == 1

    offline = await registry.client.post(f"{VERSIONS}/1.0/offline")
    assert offline.json()["state"] == "offline"
    await recorder.wait_for("registry.offline.requested")

    await registry.client.post(f"{VERSIONS}/1.0/publish")
    await as_builder(registry, DeploymentReady(version_id=version_id, replicas=[replica]))
    assert (await wait_state(registry, "1.0", "online"))["api_version"] == 2

    alias = await registry.client.put(
        "/v1/projects/vision/services/classifier/aliases/production", json={"version": "1.0"}
    )
    assert alias.json() == {"name": "production", "version": "1.0"}
    assert (await registry.client.get(f"{VERSIONS}/1.0")).json()["aliases"] == ["production"]


async def test_failed_build_records_the_step_and_can_be_retried(registry: Registry) -> None:
    await make_service(registry.client)
    version_id = uuid.UUID((await upload_version(registry.client)).json()["id"])
    await registry.client.post(f"{VERSIONS}/1.0/build")
    await as_builder(
        registry,
        BuildFailed(
            version_id=version_id,
            build_id=uuid.uuid4(),
            failed_step="pip install -r requirements.txt",
            reason="No matching distribution found for torchh==9",
        ),
    )
    failed = await wait_state(registry, "1.0", "build_failed")
    assert "pip install -r requirements.txt" in failed["state_detail"]
    assert "torchh==9" in failed["state_detail"]
    retry = await registry.client.post(f"{VERSIONS}/1.0/build")
    assert retry.json()["state"] == "building"


async def test_a_redelivered_event_takes_effect_once(registry: Registry) -> None:
    await make_service(registry.client)
    version_id = uuid.UUID((await upload_version(registry.client)).json()["id"])
    await registry.client.post(f"{VERSIONS}/1.0/build")
    await as_builder(
        registry, BuildSucceeded(version_id=version_id, build_id=uuid.uuid4(), artifact="a")
    )
    await wait_state(registry, "1.0", "built")
    await registry.client.post(f"{VERSIONS}/1.0/publish")

    ready = DeploymentReady(
        version_id=version_id, replicas=[Replica(address="127.0.0.1:1", pool=Device.CPU)]
    )
    same_id = uuid.uuid4()
    await as_builder(registry, ready, envelope_id=same_id)
    await wait_state(registry, "1.0", "online")
    # Offline and publish again, then the bus redelivers the old DeploymentReady.
    await registry.client.post(f"{VERSIONS}/1.0/offline")
    await registry.client.post(f"{VERSIONS}/1.0/publish")
    await as_builder(registry, ready, envelope_id=same_id)
    # The local bus delivers one queue in order: once this later event is applied, the
    # duplicate before it has been handled too.
    await as_builder(registry, DeploymentFailed(version_id=version_id, reason="marker"))
    version = await wait_state(registry, "1.0", "publish_failed")
    assert version["api_version"] == 1  # the duplicate did not bring it online again


async def test_state_change_and_event_are_kept_or_lost_together(registry: Registry) -> None:
    sessions = registry.app.state.sessions
    event = ProjectCreated(project_id=uuid.uuid4(), name="ghost")
    async with sessions() as session:
        uow = UnitOfWork(session=session)
        uow.emit(event)
        await session.rollback()
    async with sessions() as session:
        rows = (await session.exec(select(OutboxEvent).where(OutboxEvent.type == event.TYPE))).all()
        assert rows == []

    recorder = await record(registry)
    created = await registry.client.post("/v1/projects", json={"name": "real"})
    assert created.status_code == 201
    (envelope,) = await recorder.wait_for("registry.project.created")
    assert envelope.data["name"] == "real"
    assert envelope.correlation_id == created.headers["x-correlation-id"]

    async def marked_sent() -> None:
        # The consumer may see the event before the relay's own commit marks the row.
        while True:
            async with sessions() as session:
                query = select(OutboxEvent).where(OutboxEvent.event_id == envelope.id)
                if (await session.exec(query)).one().published_at is not None:
                    return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(marked_sent(), 10)
