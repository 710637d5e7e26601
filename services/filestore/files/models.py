"""The metadata of stored model files; the bytes live in the blob store under their SHA-256."""

from datetime import datetime
from uuid import UUID, uuid4

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import BigInteger, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel


class FileEntry(SQLModel, table=True):
    __tablename__ = "file_entry"
    __table_args__ = (
        UniqueConstraint("project", "model", "version", "path", name="uq_file_entry_path"),
    )

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    project: str = Field(max_length=64, index=True)
    model: str = Field(max_length=64)
    version: str = Field(max_length=64)
    path: str = Field(max_length=1024)
    sha256: str = Field(max_length=64, index=True)  # also the pipe's `crc`
    size: int = Field(sa_type=BigInteger)  # files of 2 GiB and more
    modified_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    uploaded_by: str = Field(max_length=64)
    uploaded_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    # The object of the direct upload this entry reads, whose SHA-256 is the uploader's
    # claim, never checked here: usable by this project only, and never read for another
    # entry's content. None: content the file store has verified (the bytes passed through
    # it, or the project linked to content it had stored so).
    object_key: str | None = Field(default=None, max_length=256)


class BlobPlacement(SQLModel, table=True):
    """A blob kept inside another object (a pack, or an upload whose digest came last)
    rather than under its content address. Only content whose SHA-256 the file store has
    computed itself is placed here, so any row will do for any project that proved it holds
    the content; a direct upload's object is named by its own entries instead."""

    __tablename__ = "blob_placement"

    sha256: str = Field(max_length=64, primary_key=True)
    key: str = Field(max_length=256, primary_key=True)
    offset: int = Field(ge=0, sa_type=BigInteger)
    size: int = Field(ge=0, sa_type=BigInteger)


class FileRead(BaseModel):
    path: str
    size: int
    sha256: str
    modified_at: datetime
    uploaded_by: str


class LinkItem(BaseModel):
    path: str = PydanticField(min_length=1, max_length=1024)
    sha256: str = PydanticField(pattern=r"^[0-9a-f]{64}$")
    modified_at: datetime | None = None


class LinkRequest(BaseModel):
    files: list[LinkItem] = PydanticField(max_length=10_000)


class LinkResult(BaseModel):
    linked: list[str]
    missing: list[str] = PydanticField(description="content the store lacks: upload these")
