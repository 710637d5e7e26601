"""What the file store's request handlers work with, built at start by ``main.py``."""

from dataclasses import dataclass

from services.common.access import RegistryAccess
from services.common.runtime import Database
from services.filestore.blobs.store import BlobStore
from services.filestore.settings import FilestoreSettings


@dataclass(frozen=True)
class FilestoreState:
    settings: FilestoreSettings
    database: Database
    blobs: BlobStore
    access: RegistryAccess
