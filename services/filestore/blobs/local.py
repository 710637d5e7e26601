"""Blobs in a local directory (the embedded default).

Renaming is free here, so every blob ends up under its content address: an upload whose
digest is only known at the end is renamed into place, and a pack's members are copied out
to their own files.
"""

import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from services.filestore.blobs.store import (
    CHUNK,
    BlobWriter,
    DirectTransfers,
    PackMember,
    Placement,
    StoredObject,
    blob_key,
)

TEMPORARY_PREFIX = ".tmp-"
_PAGE = 1000
_FOLDER = re.compile(r"[0-9a-f]{2}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, sha256: str) -> bool:
        return (self.root / blob_key(sha256)).is_file()

    def put_pack(self, path: Path, members: list[PackMember], project: str) -> str | None:
        with path.open("rb") as pack:
            for member in members:
                target = self.root / blob_key(member.sha256)
                if _reuse(target):
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
        return _FileWriter(self.root, folder / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}")

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

    def objects(self) -> Iterator[list[StoredObject]]:
        page: list[StoredObject] = []
        folder = self.root / "blobs"
        if not folder.is_dir():
            return
        for prefix in sorted(os.scandir(folder), key=lambda e: e.name):
            if not (_FOLDER.fullmatch(prefix.name) and prefix.is_dir(follow_symlinks=False)):
                continue  # temporary files lie next to the prefix folders
            for blob in os.scandir(prefix.path):
                if not (_DIGEST.fullmatch(blob.name) and blob.is_file(follow_symlinks=False)):
                    continue
                try:
                    stat = blob.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed meanwhile
                    continue
                modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                key = f"blobs/{prefix.name}/{blob.name}"
                page.append(StoredObject(key, stat.st_size, modified))
                if len(page) >= _PAGE:
                    yield page
                    page = []
        if page:
            yield page

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / blob_key(key.rpartition("/")[2])).unlink(missing_ok=True)

    def drop_unfinished(self, before: datetime) -> list[str]:
        folder = self.root / "blobs"
        if not folder.is_dir():
            return []
        dropped = []
        for entry in os.scandir(folder):
            if not entry.name.startswith(TEMPORARY_PREFIX):
                continue
            try:
                modified = datetime.fromtimestamp(entry.stat(follow_symlinks=False).st_mtime, UTC)
                if modified < before:  # its writer wrote nothing since: abandoned
                    os.unlink(entry.path)
                    dropped.append(f"blobs/{entry.name}")
            except FileNotFoundError:  # committed or aborted meanwhile
                continue
        return dropped

    @property
    def direct(self) -> DirectTransfers | None:
        return None  # clients reach a local folder only through the service


def _reuse(target: Path) -> bool:
    """Whether the blob is stored already; if so it is made young again, so the collector
    (``blobs/collector.py``) leaves it to the entries about to refer to it."""
    try:
        os.utime(target)
    except FileNotFoundError:
        return False
    return True


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
