"""Builds as the builder records them, and as its API shows them."""

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel
from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from modelcloud_proto.specs import Device


class BuildState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Build(SQLModel, table=True):
    __tablename__ = "build"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    version_id: UUID = Field(index=True)
    project: str = Field(max_length=64, index=True)
    service: str = Field(max_length=64)
    version: str = Field(max_length=64)
    bundle_sha256: str = Field(max_length=64)
    device: Device
    build_spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    state: BuildState = BuildState.QUEUED
    failed_step: str | None = Field(default=None, max_length=2000)
    reason: str | None = Field(default=None, max_length=20_000)
    artifact: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    reused_environment: bool = False
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class BuildRead(BaseModel):
    id: UUID
    version_id: UUID
    project: str
    service: str
    version: str
    state: BuildState
    failed_step: str | None
    reason: str | None
    reused_environment: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
