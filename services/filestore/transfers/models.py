"""Requests and answers of the transfer routes."""

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

Sha256 = Field(pattern=r"^[0-9a-f]{64}$")


class TransferLimits(BaseModel):
    """How a client should move bytes to and from this file store."""

    direct_uploads: bool = Field(description="presigned S3 uploads are offered for large files")
    direct_downloads: bool = Field(description="presigned S3 downloads are offered")
    direct_min_bytes: int = Field(description="files from this size should be uploaded direct")
    part_size: int = Field(description="bytes per part of a direct multipart upload")
    pack_max_bytes: int = Field(description="the largest upload pack body")
    pack_max_files: int = Field(description="the most files in one upload pack")


class UploadStart(BaseModel):
    path: str = Field(min_length=1, max_length=1024)
    sha256: str = Sha256
    size: int = Field(ge=0)


class UploadTicket(BaseModel):
    upload_id: UUID
    multipart_id: str | None = Field(description="send it back on completion or abort")
    part_size: int
    urls: list[str] = Field(description="PUT part n (from 1) to urls[n-1], in any order")
    expires_at: datetime


class UploadComplete(BaseModel):
    path: str = Field(min_length=1, max_length=1024)
    sha256: str = Sha256
    size: int = Field(ge=0)
    modified_at: datetime | None = None
    multipart_id: str | None = Field(default=None, max_length=1024)
    etags: list[str] = Field(default_factory=list, max_length=10_000)


class DownloadRequest(BaseModel):
    paths: list[str] = Field(min_length=1, max_length=10_000)


class DownloadLink(BaseModel):
    path: str
    url: str = Field(description="several files may share one URL: read each one's range")
    offset: int | None = Field(
        description="where the file's bytes start in the object at `url` (send `Range: "
        "bytes=offset-(offset+size-1)`); null: the object is the file"
    )
    size: int
    sha256: str


class DownloadLinks(BaseModel):
    files: list[DownloadLink]
    expires_at: datetime
