"""Blobs in a local directory (the embedded default).

Renaming is free here, so every blob ends up under its content address: an upload whose
digest is only known at the end is renamed into place, and a pack's members are copied out
to their own files.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from services.filestore.blobs.store import (
    CHUNK,
    BlobWriter,
    DirectTransfers,
    PackMember,
    Placement,
    blob_key,
)


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, sha256: str) -> bool:
        return (self.root / blob_key(sha256)).is_file()

    def put_pack(self, path: Path, members: list[PackMember], project: str) -> str | None:
        with path.open("rb") as pack:
            for member in members:
                target = self.root / blob_key(member.sha256)
                if target.is_file():
                    continue
                pack.seek(member.offset)
                writer = self.writer(member.sha256, member.size)
                try:
                    left = member.size
                    while left > 0 and (chunk := pack.read(min(CHUNK, left))):
                        writer.write(chunk)
                        left -= len(chunk)
                    writer.commit(member.sha256)
                except BaseException:
                    writer.abort()
                    raise
        return None

    def writer(self, sha256: str | None, size_hint: int | None) -> BlobWriter:
        folder = self.root / "blobs"
        folder.mkdir(parents=True, exist_ok=True)
        return _FileWriter(self.root, folder / f".tmp-{uuid.uuid4().hex}")

    def read(self, sha256: str) -> Iterator[bytes]:
        with (self.root / blob_key(sha256)).open("rb") as reader:
            while chunk := reader.read(CHUNK):
                yield chunk

    def read_placed(self, placement: Placement) -> Iterator[bytes]:
        with (self.root / placement.key).open("rb") as reader:
            reader.seek(placement.offset)
            left = placement.size
            while left > 0 and (chunk := reader.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def direct(self) -> DirectTransfers | None:
        return None  # clients reach a local folder only through the service


class _FileWriter:
    """A temporary file, renamed to the content address on commit."""

    def __init__(self, root: Path, temporary: Path) -> None:
        self.root = root
        self.temporary = temporary
        self.file = temporary.open("wb")

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)

    def commit(self, sha256: str) -> str | None:
        self.file.close()
        target = self.root / blob_key(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.temporary, target)
        return None

    def abort(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)
