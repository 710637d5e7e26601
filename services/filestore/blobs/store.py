"""The blob store contract, kept by the local-directory store and the S3 store.

Both are synchronous (boto3 is); the app calls them from worker threads. Writes stream in
(S3: multipart parts sent while the body still arrives, completed only once the digest is
checked) and reads come back as an iterator of chunks, so no whole file is ever held in
memory.

Most content lives under its content address (``blobs/<sha256>``). A store may also keep
content inside other objects, where writing one object per blob would cost too much: a
pack of small files kept whole (S3 takes a few hundred PUTs a second), or a large upload
whose digest was only known once the last byte had arrived (S3 cannot rename). The store
then answers with the object's key and the file store records where the blob lies (a
:class:`Placement`); reads ask for that slice of that object.

A store that clients can reach themselves (S3) also offers :class:`DirectTransfers`: large
bytes then go straight between the client and the bucket through presigned URLs, and the
file store only signs, checks what the bucket reports, and records.
"""

import base64
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def blob_key(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 digest: {sha256!r}")
    return f"blobs/{sha256[:2]}/{sha256}"


@dataclass(frozen=True)
class Placement:
    """Where a blob lies when not under its content address: a slice of another object."""

    key: str
    offset: int
    size: int


@dataclass(frozen=True)
class PackMember:
    """One blob inside a pack file: its digest and where its bytes lie in the file."""

    sha256: str
    offset: int
    size: int


@dataclass(frozen=True)
class StoredObject:
    """One object the store holds: a blob under its content address, or an object holding
    placed blobs (a pack, an upload whose digest came last, a direct upload)."""

    key: str
    size: int
    modified_at: datetime  # timezone-aware


class UploadNotFound(LookupError):
    """A direct upload the object store does not know: never started, or already completed
    or aborted."""


class PartsRejected(ValueError):
    """The object store refused to assemble a direct upload from the parts it was given."""


@dataclass(frozen=True)
class FinishedUpload:
    """A direct upload assembled by the object store, as the store itself reports it."""

    size: int
    crc32: str | None  # the composite CRC32 the store computed from the bytes it received


def composite_crc32(part_crc32s: list[str]) -> str:
    """S3's checksum of a multipart object: the CRC32 of its parts' CRC32s (base64)."""
    joined = b"".join(base64.b64decode(crc) for crc in part_crc32s)
    return base64.b64encode(zlib.crc32(joined).to_bytes(4, "big")).decode()


class DirectTransfers(Protocol):
    """Presigned transfers: the client moves the bytes, the object store checks them.

    A direct upload is a multipart upload into an object of its own. Each part's URL is
    signed with the part's CRC32, as the client computed it, which the object store checks
    against the bytes it receives; on completion the store reports the size and the
    composite CRC32 it computed, which must match what the client read. The file store never
    reads the bytes itself."""

    def start_upload(self, key: str) -> str:
        """Start a multipart upload into ``key``; returns its id."""

    def part_url(self, key: str, multipart_id: str, number: int, crc32: str, expires_s: int) -> str:
        """A presigned PUT URL for part ``number``, valid only for bytes with ``crc32``."""

    def finish_upload(
        self, key: str, multipart_id: str, parts: list[tuple[str, str]]
    ) -> FinishedUpload:
        """Complete a multipart upload from its parts' (ETag, CRC32); raises
        :class:`UploadNotFound` when there is no such upload and :class:`PartsRejected` when
        the store refuses the parts."""

    def discard(self, key: str, multipart_id: str | None) -> None:
        """Abort the multipart upload, if any, and remove the object, if any."""

    def download_url(self, sha256: str, expires_s: int) -> str:
        """A presigned GET URL for a blob stored under its content address."""

    def object_url(self, key: str, expires_s: int) -> str:
        """A presigned GET URL for an object holding placed blobs (ranged reads allowed)."""


class BlobWriter(Protocol):
    """Content arriving for one digest: invisible to readers until :meth:`commit`."""

    def write(self, chunk: bytes) -> None: ...

    def commit(self, sha256: str) -> str | None:
        """Make the checked content readable: under its digest (returns None), or, when the
        store had to choose where the bytes went before the digest was known, in the
        object whose key it returns."""

    def abort(self) -> None:
        """Drop everything written so far; nothing is left behind."""


class BlobStore(Protocol):
    def exists(self, sha256: str) -> bool: ...

    def writer(self, sha256: str | None, size_hint: int | None) -> BlobWriter:
        """Stream content in for ``sha256``, or for a digest only known at the end (None);
        the caller checks the digest before commit."""

    def put_pack(self, path: Path, members: list[PackMember], project: str) -> str | None:
        """Store the verified blobs of a pack file that ``project`` sent: each under its
        digest (returns None), or the file whole as one object whose key it returns (the
        members then lie in it, next to that project's other files)."""

    def read(self, sha256: str) -> Iterator[bytes]:
        """The blob's bytes, in chunks of about ``CHUNK``."""

    def read_placed(self, placement: Placement) -> Iterator[bytes]:
        """The bytes of a blob kept inside another object."""

    def ready(self) -> None:
        """Raise if the store cannot be reached."""

    def objects(self) -> Iterator[list[StoredObject]]:
        """Every finished object the store holds, a page (up to 1,000) at a time; unfinished
        uploads are not listed."""

    def remove(self, keys: list[str]) -> None:
        """Delete these objects; one already gone is no error."""

    def drop_unfinished(self, before: datetime) -> list[str]:
        """Remove what uploads started before ``before`` and never finished left behind
        (temporary files, multipart uploads); returns what was removed."""

    @property
    def direct(self) -> DirectTransfers | None:
        """Presigned transfers, when clients can reach the store themselves."""
