"""Requests and answers of the transfer routes."""

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

Sha256 = Field(pattern=r"^[0-9a-f]{64}$")
Crc32 = Field(pattern=r"^[A-Za-z0-9+/]{6}==$", description="base64 of the big-endian CRC32")


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
    size: int = Field(ge=1, description="empty files go through the file store")


class UploadTicket(BaseModel):
    upload_id: UUID
    multipart_id: str = Field(description="send it back with every later call")
    part_size: int = Field(description="every part but the last has exactly this size")
    parts: int = Field(description="how many parts the file is sent in, numbered from 1")


class PartToSign(BaseModel):
    number: int = Field(ge=1, le=10_000)
    crc32: str = Crc32


class PartsToSign(BaseModel):
    multipart_id: str = Field(min_length=1, max_length=1024)
    parts: list[PartToSign] = Field(min_length=1, max_length=100)


class SignedParts(BaseModel):
    urls: list[str] = Field(description="PUT each part's bytes to its URL, in the order asked")
    expires_at: datetime


class PartSent(BaseModel):
    etag: str = Field(min_length=1, max_length=128)
    crc32: str = Crc32


class UploadComplete(BaseModel):
    path: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0)
    sha256: str = Sha256
    modified_at: datetime | None = None
    multipart_id: str = Field(min_length=1, max_length=1024)
    parts: list[PartSent] = Field(
        min_length=1, max_length=10_000, description="every part, in order"
    )


class DownloadRequest(BaseModel):
    paths: list[str] = Field(min_length=1, max_length=10_000)


class DownloadLink(BaseModel):
    path: str
    url: str | None = Field(
        description="several files may share one URL: read each one's range; null: read "
        "the file through the file store (`GET .../files/{path}`), as when its bytes lie in "
        "an object holding other projects' files"
    )
    offset: int | None = Field(
        description="where the file's bytes start in the object at `url` (send `Range: "
        "bytes=offset-(offset+size-1)`); null: the object is the file, or there is no `url`"
    )
    size: int
    sha256: str


class DownloadLinks(BaseModel):
    files: list[DownloadLink]
    expires_at: datetime
