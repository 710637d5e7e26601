"""What should run for each published version, and the replicas that do."""

from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid4

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel

from modelcloud_proto.events import Replica
from modelcloud_proto.specs import Device


class DeploymentState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


WANTED = frozenset({DeploymentState.STARTING, DeploymentState.READY})


class Deployment(SQLModel, table=True):
    __tablename__ = "deployment"

    version_id: UUID = Field(primary_key=True)
    project: str = Field(max_length=64, index=True)
    service: str = Field(max_length=64)
    version: str = Field(max_length=64)
    build_id: UUID
    desired_replicas: int
    port: int
    device: Device
    concurrency: int = 1
    state: DeploymentState = DeploymentState.STARTING
    reason: str | None = Field(default=None, max_length=20_000)
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ReplicaRecord(SQLModel, table=True):
    __tablename__ = "replica"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    version_id: UUID = Field(index=True)
    handle: str = Field(max_length=200, description="pid or container id")
    host: str = Field(max_length=200)
    port: int
    pool: Device
    restarts: int = 0
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    ready_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    replaces: UUID | None = Field(
        default=None,
        description="the dead replica this one is replacing, until the swap commits",
    )

    def as_event(self) -> Replica:
        return Replica(address=f"{self.host}:{self.port}", pool=self.pool)


class ReplicaRead(BaseModel):
    address: str
    pool: Device
    restarts: int
    started_at: datetime
    ready: bool = PydanticField(description="answered /healthz since it started")


class DeploymentRead(BaseModel):
    project: str
    service: str
    version: str
    version_id: UUID
    state: DeploymentState
    reason: str | None
    desired_replicas: int
    replicas: list[ReplicaRead]
