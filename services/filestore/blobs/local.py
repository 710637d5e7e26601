"""Blobs in a local directory (the embedded default)."""

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from services.filestore.blobs.store import CHUNK, BlobWriter, DirectTransfers, blob_key


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, sha256: str) -> bool:
        return (self.root / blob_key(sha256)).is_file()

    def put(self, path: Path, sha256: str) -> None:
        target = self.root / blob_key(sha256)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".tmp-{uuid.uuid4().hex}"
        shutil.copyfile(path, temporary)
        os.replace(temporary, target)

    def writer(self, sha256: str, size_hint: int | None) -> BlobWriter:
        target = self.root / blob_key(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        return _FileWriter(target)

    def read(self, sha256: str) -> Iterator[bytes]:
        with (self.root / blob_key(sha256)).open("rb") as reader:
            while chunk := reader.read(CHUNK):
                yield chunk

    def ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def direct(self) -> DirectTransfers | None:
        return None  # clients reach a local folder only through the service


class _FileWriter:
    """A temporary file beside the blob, renamed into place on commit."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.temporary = target.parent / f".tmp-{uuid.uuid4().hex}"
        self.file = self.temporary.open("wb")

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.temporary, self.target)

    def abort(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)
