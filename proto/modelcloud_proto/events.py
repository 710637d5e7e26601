"""Events between services: one envelope, versioned payloads, one registry of types.

Every event travels as an :class:`Envelope` whose ``data`` is one of the payload classes
below, looked up by ``type``. Types read ``<producer>.<entity>.<what happened>``. A payload
change that old consumers cannot read gets a new ``VERSION``.
"""

from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from modelcloud_proto.specs import BuildSpec, Device

EVENT_TYPES: dict[str, type["Event"]] = {}


class Event(BaseModel):
    """Base of every event payload; subclasses name their ``TYPE``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TYPE" in cls.__dict__:
            if cls.TYPE in EVENT_TYPES:
                raise TypeError(f"event type {cls.TYPE} is declared twice")
            EVENT_TYPES[cls.TYPE] = cls


class UnknownEventType(ValueError):
    """An envelope names a type this code does not know (a newer producer, or garbage)."""


class Envelope(BaseModel):
    """The wire form of an event, identical on RabbitMQ and on the in-process bus."""

    model_config = ConfigDict(frozen=True)

    id: UUID = Field(default_factory=uuid4)
    type: str
    version: int
    occurred_at: datetime
    producer: str
    correlation_id: str | None = None
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Event, *, producer: str, correlation_id: str | None = None) -> Self:
        return cls(
            type=event.TYPE,
            version=event.VERSION,
            occurred_at=datetime.now(UTC),
            producer=producer,
            correlation_id=correlation_id,
            data=event.model_dump(mode="json"),
        )

    def event(self) -> Event:
        """The typed payload; raises :class:`UnknownEventType` or a validation error."""
        try:
            cls = EVENT_TYPES[self.type]
        except KeyError:
            raise UnknownEventType(self.type) from None
        if self.version != cls.VERSION:
            raise UnknownEventType(f"{self.type} version {self.version}")
        return cls.model_validate(self.data)


# ----------------------------------------------------------------------------- registry


class ProjectCreated(Event):
    TYPE = "registry.project.created"
    project_id: UUID
    name: str


class GroupCreated(Event):
    TYPE = "registry.group.created"
    project_id: UUID
    group_id: UUID
    name: str


class ServiceRegistered(Event):
    TYPE = "registry.service.registered"
    project: str
    service_id: UUID
    service: str
    group: str
    port: int
    device: Device


class ServiceVisibilityChanged(Event):
    """A service turned public (callable with any valid token) or private (its project's
    readers only): the gateway applies it to every routed version of the service at once."""

    TYPE = "registry.service.visibility_changed"
    project: str
    service_id: UUID
    service: str
    public: bool


class VersionRegistered(Event):
    TYPE = "registry.version.registered"
    project: str
    service: str
    version_id: UUID
    version: str
    bundle_sha256: str


class BuildRequested(Event):
    TYPE = "registry.build.requested"
    project: str
    service: str
    version_id: UUID
    version: str
    bundle_sha256: str
    build_spec: BuildSpec


class PublishRequested(Event):
    TYPE = "registry.publish.requested"
    project: str
    service: str
    version_id: UUID
    version: str
    port: int
    device: Device
    replicas: int = Field(ge=1)


class OfflineRequested(Event):
    TYPE = "registry.offline.requested"
    project: str
    service: str
    version_id: UUID
    version: str


class VersionOnline(Event):
    TYPE = "registry.version.online"
    project: str
    service: str
    version_id: UUID
    version: str
    api_version: int
    replicas: list["Replica"]
    device: Device = Field(default=Device.ANY, description="the service's preferred device")
    public: bool = Field(default=False, description="callable with any valid token")
    timeout_s: float | None = Field(
        default=None, description="the service's bound on one call (performance notes)"
    )
    # Absent in events from a registry older than this field: the gateway then forwards
    # any one-segment POST except the model server's own /setup.
    commands: list[str] | None = Field(
        default=None,
        description="the commands the version declares (its interface): the only POST "
        "paths the gateway forwards",
    )


class VersionOffline(Event):
    TYPE = "registry.version.offline"
    project: str
    service: str
    version_id: UUID
    version: str
    api_version: int | None


# ----------------------------------------------------------------------------- builder


class Replica(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(description="host:port the gateway calls")
    pool: Device = Field(description="gpu when the replica was given a GPU, else cpu")


class BuildStarted(Event):
    TYPE = "builder.build.started"
    version_id: UUID
    build_id: UUID


class BuildSucceeded(Event):
    TYPE = "builder.build.succeeded"
    version_id: UUID
    build_id: UUID
    artifact: str = Field(description="venv path or image id")


class BuildFailed(Event):
    TYPE = "builder.build.failed"
    version_id: UUID
    build_id: UUID
    failed_step: str | None
    reason: str


class DeploymentReady(Event):
    TYPE = "builder.deployment.ready"
    version_id: UUID
    replicas: list[Replica]


class DeploymentFailed(Event):
    TYPE = "builder.deployment.failed"
    version_id: UUID
    reason: str


class DeploymentStopped(Event):
    TYPE = "builder.deployment.stopped"
    version_id: UUID


class ReplicaRestarted(Event):
    TYPE = "builder.replica.restarted"
    version_id: UUID
    replica: Replica
    restarts: int
    reason: str
    previous_address: str | None = Field(
        default=None, description="where the replaced replica listened, when that differs"
    )


VersionOnline.model_rebuild()


# Every consuming queue and the event types it is bound to. The buses declare all of them at
# start, before anything is published: an event published before its consumer ever ran then
# waits in the queue instead of being dropped by a topic exchange with nothing bound.
CONSUMER_QUEUES: dict[str, tuple[str, ...]] = {
    "registry": ("builder.build.*", "builder.deployment.*", "builder.replica.*"),
    "builder": (
        "registry.build.requested",
        "registry.publish.requested",
        "registry.offline.requested",
    ),
    "gateway": (
        "registry.version.online",
        "registry.version.offline",
        "registry.service.visibility_changed",
        "builder.replica.restarted",
    ),
}
