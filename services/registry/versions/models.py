"""A service version and its lifecycle.

::

    registered ─build─▶ building ─▶ built ─publish─▶ publishing ─▶ online ─offline─▶ offline
                          │                             │                              │
                          ▼                             ▼                              │
                     build_failed ─build─▶ …      publish_failed ─publish─▶ …    publish ◀┘

Every successful publish gives the service its next API version number.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from modelcloud_proto.events import Replica
from modelcloud_proto.manifest import ModelManifest
from modelcloud_proto.specs import BuildSpec
from services.registry.names import Name


class VersionState(StrEnum):
    REGISTERED = "registered"
    BUILDING = "building"
    BUILT = "built"
    BUILD_FAILED = "build_failed"
    PUBLISHING = "publishing"
    ONLINE = "online"
    PUBLISH_FAILED = "publish_failed"
    OFFLINE = "offline"


# The states each request may start from.
BUILDABLE = frozenset({VersionState.REGISTERED, VersionState.BUILD_FAILED, VersionState.BUILT})
PUBLISHABLE = frozenset({VersionState.BUILT, VersionState.PUBLISH_FAILED, VersionState.OFFLINE})
ONLINE = frozenset({VersionState.ONLINE})


class ServiceVersion(SQLModel, table=True):
    __tablename__ = "service_version"
    __table_args__ = (UniqueConstraint("service_id", "version", name="uq_service_version"),)

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    service_id: UUID = Field(foreign_key="model_service.id", index=True, ondelete="CASCADE")
    version: str = Field(max_length=64)
    bundle_sha256: str = Field(max_length=64)
    bundle_size: int
    interface: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    interface_warnings: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    build_spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    state: VersionState = VersionState.REGISTERED
    state_detail: str | None = Field(default=None, max_length=4000)
    api_version: int | None = None
    replicas: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class Alias(SQLModel, table=True):
    service_id: UUID = Field(foreign_key="model_service.id", primary_key=True, ondelete="CASCADE")
    name: str = Field(primary_key=True, max_length=64)
    version_id: UUID = Field(foreign_key="service_version.id", ondelete="CASCADE")


class VersionRead(BaseModel):
    id: UUID
    project: str
    service: str
    version: str
    state: VersionState
    state_detail: str | None
    api_version: int | None
    bundle_sha256: str
    bundle_size: int
    interface: ModelManifest
    interface_warnings: list[str]
    build_spec: BuildSpec
    replicas: list[Replica]
    aliases: list[str]
    created_at: datetime
    updated_at: datetime


class PublishRequest(BaseModel):
    replicas: int = PydanticField(default=1, ge=1, le=64)


class AliasSet(BaseModel):
    version: str = PydanticField(min_length=1, max_length=64)


class AliasRead(BaseModel):
    name: Name
    version: str
