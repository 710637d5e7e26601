"""The blob store the settings name: a local folder or an S3 bucket."""

from services.filestore.blobs.local import LocalBlobs
from services.filestore.blobs.s3 import S3Blobs
from services.filestore.blobs.store import BlobStore
from services.filestore.settings import FilestoreSettings


def blob_store(settings: FilestoreSettings) -> BlobStore:
    if settings.storage == "s3":
        return S3Blobs.from_settings(settings)
    return LocalBlobs(settings.data_dir.resolve() / "blobs")
