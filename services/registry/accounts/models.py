"""Users and their API tokens. Tokens are stored as SHA-256 digests: they are 256-bit
random strings, so a fast hash is safe, and the plain token is shown only once."""

from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid4

from pydantic import BaseModel
from sqlalchemy import Column, DateTime, Enum
from sqlmodel import Field, SQLModel

from services.registry.names import Name


class ServiceRole(StrEnum):
    """A platform service's own account: it may make exactly the reads its service makes
    (``accounts/service_roles.py``), in every project, and nothing else."""

    BUILDER = "builder"
    GATEWAY = "gateway"


class UserBase(SQLModel):
    name: Name = Field(unique=True, index=True, max_length=64)
    is_admin: bool = False
    service_role: ServiceRole | None = Field(
        default=None,
        # Stored as its value in a plain VARCHAR: no PostgreSQL enum type to migrate when a
        # role is added.
        sa_column=Column(
            Enum(
                ServiceRole,
                native_enum=False,
                length=32,
                values_callable=lambda roles: [role.value for role in roles],
            ),
            nullable=True,
        ),
        description="set for a platform service's account (not a person); never with is_admin",
    )


class User(UserBase, table=True):
    id: UUID = Field(default_factory=uuid4, primary_key=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class UserCreate(UserBase):
    pass


class UserRead(UserBase):
    id: UUID
    created_at: datetime


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    user_id: UUID = Field(foreign_key="user.id", index=True)
    name: str = Field(max_length=100)
    digest: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class TokenCreate(BaseModel):
    name: str = Field(default="cli", min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenRead(BaseModel):
    id: UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenIssued(TokenRead):
    token: str = Field(description="The secret itself: shown this once, never again.")
