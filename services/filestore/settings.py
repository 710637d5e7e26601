"""File store settings, from ``FILESTORE_*`` environment variables."""

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class FilestoreSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FILESTORE_", extra="ignore", frozen=True)

    service_name: str = "filestore"
    port: int = Field(default=8003, ge=0, le=65535)
    storage: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = Field(default=None, description="any S3 endpoint; AWS if unset")
    s3_bucket: str = "modelcloud-files"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_public_endpoint_url: str | None = Field(
        default=None, description="the S3 endpoint clients reach, for presigned URLs"
    )
    direct_downloads: bool = Field(
        default=True, description="presigned S3 downloads (clients can reach S3)"
    )
    direct_uploads: bool = Field(
        default=True,
        description="offer presigned S3 uploads for large files (clients can reach S3): the "
        "bytes skip the file store, which checks the CRC32s S3 computed",
    )
    direct_min_bytes: int = Field(
        default=32 << 20, ge=1, description="files from this size go straight to S3"
    )
    part_size: int = Field(
        default=8 << 20, ge=5 << 20, le=5 << 30, description="direct uploads: bytes per part"
    )
    presign_expires_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    pack_max_bytes: int = Field(default=64 << 20, ge=1, description="largest upload pack")
    pack_max_files: int = Field(default=1000, ge=1)
    registry_url: str = Field(
        default="http://127.0.0.1:8001", description="where tokens are checked"
    )
    auth_cache_s: float = Field(default=5.0, ge=0, description="how long a token check is reused")
    max_file_bytes: int = Field(default=1 << 40, ge=1)
    upload_max_age_s: float = Field(
        default=24 * 3600,
        gt=0,
        description="the longest an upload may take: one still going on after this is "
        "refused when it ends (410), so its temporary files and unfinished multipart uploads "
        "older than this are abandoned and removed at start (several replicas may share one "
        "folder, so an age, not the process, says what is abandoned)",
    )
    gc_interval_s: float = Field(
        default=3600, ge=0, description="how often unreferenced blobs are collected; 0: never"
    )
    gc_grace_s: float = Field(
        default=3600,
        ge=0,
        description="a blob is collected only once it is this old and was found unreferenced "
        "this long ago: the file row of an upload in flight is committed after its blob",
    )
