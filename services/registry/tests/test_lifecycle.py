"""Build and publish lifecycle, events through the outbox, and idempotent consumption, on
the embedded default (SQLite + the local bus). The builder is played by the test."""

import asyncio
import uuid
from typing import Any

import pytest
from sqlmodel import select

from modelcloud_proto.events import (
    BuildFailed,
    BuildSucceeded,
    DeploymentFailed,
    DeploymentReady,
    Envelope,
    Event,
    Replica,
)
from modelcloud_proto.specs import Device
from modelcloud_testing.registries import Registry, make_service, upload_version
from services.common.events.outbox import OutboxEvent
from services.common.runtime import service_state
from services.registry.projects.models import Project
from services.registry.state import RegistryState
from services.registry.unit_of_work import UnitOfWork
from services.registry.versions.models import ServiceVersion

VERSIONS = "/v1/projects/vision/services/classifier/versions"


class Recorder:
    """A test consumer of the registry's own events."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._arrived = asyncio.Condition()

    async def __call__(self, envelope: Envelope) -> None:
        async with self._arrived:
            self.envelopes.append(envelope)
            self._arrived.notify_all()

    def types(self) -> list[str]:
        return [e.type for e in self.envelopes]

    def _of_type(self, event_type: str) -> list[Envelope]:
        return [e for e in self.envelopes if e.type == event_type]

    async def wait_for(
        self, event_type: str, count: int = 1, timeout: float = 10
    ) -> list[Envelope]:
        async def seen() -> list[Envelope]:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self._of_type(event_type)) >= count)
            return self._of_type(event_type)

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


async def wait_left(
    registry: Registry, version: str, state: str, timeout: float = 10
) -> dict[str, Any]:
    """The version once it is no longer in ``state``."""

    async def poll() -> dict[str, Any]:
        while True:
            body: dict[str, Any] = (await registry.client.get(f"{VERSIONS}/{version}")).json()
            if body["state"] != state:
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
    version = await wait_left(registry, "1.0", "publishing")
    # Applied again, the duplicate would have brought it online as API version 2 (and the
    # marker would have found nothing to fail).
    assert (version["state"], version["api_version"]) == ("publish_failed", 1)


class Crash(Exception):
    """The registry dies after its changes reached the database, before they commit."""


async def outbox_rows(registry: Registry, event_type: str) -> list[OutboxEvent]:
    async with service_state(registry.app, RegistryState).database.sessions() as session:
        query = select(OutboxEvent).where(OutboxEvent.type == event_type)
        return list((await session.exec(query)).all())


async def check_state_change_and_event_kept_or_lost_together(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build request (a version row change) and a project creation (a new row), each with
    its outbox event: a crash between flush and commit loses both, a commit keeps both."""
    recorder = await record(registry)
    await make_service(registry.client)
    assert (await upload_version(registry.client)).status_code == 201
    flushed: list[tuple[str, int, list[str]]] = []  # version state, ghosts, event types

    async def crash_before_commit(self: UnitOfWork) -> None:
        await self.session.flush()
        # Row and event are both in the database now, in this transaction: only the
        # missing commit can take them away.
        session = self.session
        version = select(ServiceVersion.state).where(ServiceVersion.version == "1.0")
        ghost = select(Project.id).where(Project.name == "ghost")
        flushed.append(
            (
                (await session.exec(version)).one(),
                len((await session.exec(ghost)).all()),
                [row.type for row in (await session.exec(select(OutboxEvent))).all()],
            )
        )
        raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(UnitOfWork, "commit", crash_before_commit)
        with pytest.raises(Crash):
            await registry.client.post(f"{VERSIONS}/1.0/build")
        with pytest.raises(Crash):
            await registry.client.post("/v1/projects", json={"name": "ghost"})
    (building, no_ghost, events_then), (registered, ghosts, events_later) = flushed
    assert (building, no_ghost, events_then.count("registry.build.requested")) == ("building", 0, 1)
    assert (registered, ghosts, events_later.count("registry.project.created")) == (
        "registered",
        1,
        2,  # vision's, committed before, and ghost's
    )

    # Lost together: neither the state change nor its event survived the crash.
    assert (await registry.client.get(f"{VERSIONS}/1.0")).json()["state"] == "registered"
    assert (await registry.client.get("/v1/projects/ghost")).status_code == 404
    assert await outbox_rows(registry, "registry.build.requested") == []
    created_rows = await outbox_rows(registry, "registry.project.created")
    assert [Envelope.model_validate(row.envelope).data["name"] for row in created_rows] == [
        "vision"
    ]

    # Kept together: the same requests, committed, leave both and the relay sends the event.
    building_ok = await registry.client.post(f"{VERSIONS}/1.0/build")
    assert building_ok.json()["state"] == "building"
    created = await registry.client.post("/v1/projects", json={"name": "ghost"})
    assert created.status_code == 201
    (requested,) = await recorder.wait_for("registry.build.requested")
    assert requested.data["version"] == "1.0"
    assert requested.correlation_id == building_ok.headers["x-correlation-id"]
    announced = await recorder.wait_for("registry.project.created", count=2)
    assert [e.data["name"] for e in announced] == ["vision", "ghost"]
    assert (await registry.client.get(f"{VERSIONS}/1.0")).json()["state"] == "building"
    assert (await registry.client.get("/v1/projects/ghost")).status_code == 200

    async def marked_sent(event_id: uuid.UUID) -> None:
        # The consumer may see the event before the relay's own commit marks the row.
        while True:
            async with service_state(registry.app, RegistryState).database.sessions() as session:
                query = select(OutboxEvent).where(OutboxEvent.event_id == event_id)
                if (await session.exec(query)).one().published_at is not None:
                    return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(marked_sent(requested.id), 10)
    await asyncio.wait_for(marked_sent(announced[1].id), 10)


async def test_state_change_and_event_are_kept_or_lost_together(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await check_state_change_and_event_kept_or_lost_together(registry, monkeypatch)
