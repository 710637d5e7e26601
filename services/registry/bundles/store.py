"""Bundle files stored by content: ``<root>/<sha[:2]>/<sha>.tar``.

The name is the sha256 of the uploaded bytes (compressed or not, the file is kept as it came),
so a bundle uploaded twice is stored once, and a file either is complete under its final
name or absent: it only ever arrives there by an atomic rename.
"""

import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

__all__ = ["BundleStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleStore:
    """Content-addressed bundle files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, path: Path, sha256: str) -> Path:
        """Move the checked file at ``path`` into the store and return where it now lives.

        When the same content is stored already, ``path`` is deleted instead. Raises
        ``ValueError`` for a malformed digest (a caller's bug, not a user's input).
        """
        target = self._location(sha256)
        if target.exists():
            path.unlink(missing_ok=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync(path)  # the database will point at this file once the caller commits
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The upload folder is on another filesystem: copy next to the target, then
            # rename, so the final name still only ever holds a complete file.
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            try:
                shutil.copyfile(path, staging)
                _fsync(staging)
                os.replace(staging, target)
            finally:
                staging.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        _fsync_folder(target.parent)
        return target

    def path_of(self, sha256: str) -> Path:
        """The stored file of ``sha256``; ``KeyError`` when absent or not a sha256 digest."""
        try:
            target = self._location(sha256)
        except ValueError:
            raise KeyError(sha256) from None
        if not target.is_file():
            raise KeyError(sha256)
        return target

    def open(self, sha256: str) -> BinaryIO:
        """The stored file of ``sha256``, opened for reading; ``KeyError`` when absent."""
        return self.path_of(sha256).open("rb")

    def _location(self, sha256: str) -> Path:
        # fullmatch, not match with '$': '$' would also accept a trailing newline.
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a lowercase hex sha256 digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / f"{sha256}.tar"


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
