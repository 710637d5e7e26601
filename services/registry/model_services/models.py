"""A model service and its metadata (seed 001, Step 2): name, tagline, Markdown description,
gallery (the first image is the thumbnail), license, performance notes, links."""

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, HttpUrl
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from modelcloud_proto.specs import PerformanceNotes, ServiceLinks
from services.registry.names import Name
from services.registry.projects.models import DESCRIPTION_MAX


class ServiceMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tagline: str = PydanticField(default="", max_length=200)
    description: str = PydanticField(default="", max_length=DESCRIPTION_MAX, description="Markdown")
    gallery: list[HttpUrl] = PydanticField(default_factory=list, max_length=50)
    license: str = PydanticField(default="", max_length=100)
    performance: PerformanceNotes = PydanticField(default_factory=PerformanceNotes)
    links: ServiceLinks = PydanticField(default_factory=ServiceLinks)
    public: bool = PydanticField(default=False, description="anyone with a token may call it")


class ModelService(SQLModel, table=True):
    __tablename__ = "model_service"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_model_service_name"),
        UniqueConstraint("port", name="uq_model_service_port"),
    )

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    project_id: UUID = Field(foreign_key="project.id", index=True, ondelete="CASCADE")
    group_id: UUID = Field(foreign_key="service_group.id", index=True)
    name: str = Field(max_length=64)
    port: int
    api_versions: int = Field(default=0, description="API versions published so far")
    tagline: str = ""
    description: str = ""
    gallery: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    license: str = ""
    performance: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    links: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    public: bool = False
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ServiceCreate(ServiceMetadata):
    name: Name
    group: Name
    port: int | None = PydanticField(
        default=None,
        ge=1024,
        le=65535,
        description="in the service port range (20000-29999 by default), never a port of the "
        "platform itself; a free one is assigned if absent",
    )


class ServiceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tagline: str | None = PydanticField(default=None, max_length=200)
    description: str | None = PydanticField(default=None, max_length=DESCRIPTION_MAX)
    gallery: list[HttpUrl] | None = PydanticField(default=None, max_length=50)
    license: str | None = PydanticField(default=None, max_length=100)
    performance: PerformanceNotes | None = None
    links: ServiceLinks | None = None
    public: bool | None = None


class ServiceRead(ServiceMetadata):
    id: UUID
    project: str
    group: str
    name: str
    port: int
    api_versions: int
    thumbnail: HttpUrl | None
    created_at: datetime
