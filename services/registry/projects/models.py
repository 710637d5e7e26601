"""Projects (the seed's 项目: name, type, version, description), members with a role each,
and service groups (分组) that organise a project's model services."""

from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid4

from pydantic import BaseModel
from sqlalchemy import Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from services.registry.names import Name

DESCRIPTION_MAX = 20_000


class Role(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: "Role") -> bool:
        order = [Role.READ, Role.WRITE, Role.ADMIN]
        return order.index(self) >= order.index(needed)


class ProjectBase(SQLModel):
    name: Name = Field(unique=True, index=True, max_length=64)
    type: str = Field(default="general", min_length=1, max_length=64)
    version: str = Field(default="1.0", min_length=1, max_length=64)
    description: str = Field(default="", max_length=DESCRIPTION_MAX)


class Project(ProjectBase, table=True):
    id: UUID = Field(default_factory=uuid4, primary_key=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ProjectCreate(ProjectBase):
    pass


class ProjectUpdate(SQLModel):
    type: str | None = Field(default=None, min_length=1, max_length=64)
    version: str | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX)


class ProjectRead(ProjectBase):
    id: UUID
    created_at: datetime
    role: Role | None = None


class Membership(SQLModel, table=True):
    project_id: UUID = Field(foreign_key="project.id", primary_key=True, ondelete="CASCADE")
    user_id: UUID = Field(foreign_key="user.id", primary_key=True)
    role: Role


class MembershipSet(BaseModel):
    role: Role


class MembershipRead(BaseModel):
    user: str
    role: Role


class GroupBase(SQLModel):
    name: Name = Field(max_length=64)
    description: str = Field(default="", max_length=DESCRIPTION_MAX)


class ServiceGroup(GroupBase, table=True):
    __tablename__ = "service_group"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_service_group_name"),)

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    project_id: UUID = Field(foreign_key="project.id", index=True, ondelete="CASCADE")
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class GroupCreate(GroupBase):
    pass


class GroupRead(GroupBase):
    id: UUID
    created_at: datetime
