"""Folder inputs: .zip and .tar archives unpacked with their cost bounded first.

A 2 MiB zip sent as a model's folder input unpacked to 2 GiB on disk, and a 272-byte tar
whose pax header held 100,000 digits froze the model server for 34 s: this Python's
``tarfile`` parses pax headers with regexes that are quadratic on digits (CVE-2024-6232)
and hold the GIL meanwhile. So, before anything is written:

- a zip's central directory is read: member count, declared unpacked size and its ratio
  to the archive's size are capped; the sizes are counted again while the bytes are
  written, since a central directory can lie;
- a tar's raw 512-byte headers are walked without ``tarfile``, in linear time, refusing
  pax and GNU long-name headers over a few KiB, long digit runs, sparse or unknown member
  types, too many members and too many bytes; only then does ``tarfile`` read it, with
  the compression the walk found and a header class that checks the sizes again.

A refused archive leaves nothing in the target folder. The tar walk is the same as
``services/common/tar_guard.py``: the SDK imports nothing of the platform's services (an
import rule checked in ``make lint``), so it keeps its own copy; change both together
(``tests/contract/test_tar_walk_parity.py`` fails when they drift apart).
Everything here blocks: the model server decodes file inputs in a worker thread.
"""

import bz2
import gzip
import lzma
import re
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Final, Literal, Protocol

__all__ = ["NOT_AN_ARCHIVE", "ArchiveLimits", "ArchiveRejected", "unpack_archive"]

NOT_AN_ARCHIVE: Final = "a folder must be given as a .zip or .tar archive"
_MAX_HEADER_BYTES: Final = 8 << 10  # PATH_MAX is 4096: a name and a link fit twice over
_COPY_CHUNK: Final = 1 << 16
_ZIP_DAMAGED: Final = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted member
)


Compression = Literal["", "gz", "bz2", "xz"]

MAX_DIGIT_RUN: Final = 64
MAX_HEADER_CHAIN: Final = 8
_BLOCK: Final = 512
_SKIP_CHUNK: Final = 1 << 20
_EXTENDED: Final = frozenset(b"xgXLK")  # pax (POSIX, global, Solaris), GNU long name/link
_PAX: Final = frozenset(b"xgX")
# Member types whose data blocks follow the header (tarfile's REGULAR_TYPES less sparse).
_WITH_DATA: Final = frozenset(b"0\x007")
_WITHOUT_DATA: Final = frozenset(b"123456")  # links, devices, folders, FIFOs
_DIGIT_RUNS: Final = re.compile(rb"[0-9]+")  # greedy, each run matched once: linear
# Decompressors and tarfile report damage with their own exception types.
_DAMAGED: Final = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_READ_MODE: Final[dict[Compression, Literal["r:", "r:gz", "r:bz2", "r:xz"]]] = {
    "": "r:",
    "gz": "r:gz",
    "bz2": "r:bz2",
    "xz": "r:xz",
}
_MAGIC: Final[tuple[tuple[bytes, Compression], ...]] = (
    (b"\x1f\x8b", "gz"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
)


@dataclass(frozen=True)
class TarSummary:
    compression: Compression
    members: int
    unpacked_bytes: int


class ArchiveRejected(ValueError):
    """The archive is refused whole; the message is safe to show the caller. ``member`` is
    the 0-based index of the tar member at fault, when one is."""

    def __init__(self, message: str, member: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.member = member


@dataclass(frozen=True)
class ArchiveLimits:
    """What one folder input may unpack to."""

    max_members: int = 10_000
    max_unpacked_bytes: int = 1 << 30  # as much as a URL input may download
    # Unpacked size over archive size, checked once the unpacked size passes ratio_floor:
    # a deflate bomb reaches about 1000, real model folders rarely 10.
    max_ratio: int = 200
    ratio_floor_bytes: int = 16 << 20
    max_header_bytes: int = _MAX_HEADER_BYTES
    max_header_total_bytes: int = 4 << 20  # tarfile parses ~8 KiB a ms at worst
    compressed: bool = True  # accept .tar.gz, .tar.bz2 and .tar.xz as well as plain .tar


def unpack_archive(archive: Path, target: Path, limits: ArchiveLimits) -> Path:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) into ``target``, a folder that must not exist
    yet; raises :class:`ArchiveRejected` (and leaves no ``target``) for anything over
    ``limits``, any member leaving the folder, and any link or special file."""
    target.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, target, limits)
        else:
            _unpack_tar(archive, target, limits)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _check_ratio(unpacked: int, archive: Path, limits: ArchiveLimits) -> None:
    if unpacked > limits.max_unpacked_bytes:
        raise ArchiveRejected(f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes")
    packed = max(archive.stat().st_size, 1)
    if unpacked > limits.ratio_floor_bytes and unpacked > packed * limits.max_ratio:
        raise ArchiveRejected(
            f"the archive unpacks to {unpacked // packed} times its size "
            f"(at most {limits.max_ratio} is accepted)"
        )


def _check_member(name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or "\x00" in name:
        raise ArchiveRejected(f"archive member {name!r} points outside the folder")


# ----------------------------------------------------------------------------- zip


def _unpack_zip(archive: Path, target: Path, limits: ArchiveLimits) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > limits.max_members:
                raise ArchiveRejected(f"the archive has more than {limits.max_members} members")
            _check_ratio(sum(info.file_size for info in members), archive, limits)
            for info in members:
                _check_member(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ArchiveRejected(f"archive member {info.filename} is a symbolic link")
            written = 0
            for info in members:
                written = _extract(zf, info, target, written, limits.max_unpacked_bytes)
    except _ZIP_DAMAGED:
        raise ArchiveRejected("the archive is a damaged or unsupported zip file") from None
    except (IsADirectoryError, NotADirectoryError, FileExistsError):
        raise ArchiveRejected("the archive has a file and a folder of the same name") from None


def _extract(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int, limit: int
) -> int:
    """Write one member, counting its bytes as they come; the running total is returned."""
    parts = [p for p in PurePosixPath(info.filename.replace("\\", "/")).parts if p != "."]
    if not parts:
        return written
    destination = target.joinpath(*parts)
    if info.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        return written
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as source, destination.open("wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise ArchiveRejected(f"the archive unpacks to more than {limit} bytes")
            out.write(chunk)
    return written


# ----------------------------------------------------------------------------- tar


def _unpack_tar(archive: Path, target: Path, limits: ArchiveLimits) -> None:
    summary = _scan_tar(archive, limits)
    _check_ratio(summary.unpacked_bytes, archive, limits)

    class GuardedTarInfo(_GuardedTarInfo):
        max_header_bytes = limits.max_header_bytes

    try:
        with tarfile.open(
            archive, mode=_READ_MODE[summary.compression], tarinfo=GuardedTarInfo
        ) as tf:
            members = tf.getmembers()
            for member in members:
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise ArchiveRejected(f"archive member {member.name} is not a file or folder")
            tf.extractall(target, members=members, filter="data")
    except (*_DAMAGED, tarfile.FilterError):
        raise ArchiveRejected("the archive is a damaged or truncated tar archive") from None


def _scan_tar(path: Path, limits: ArchiveLimits) -> TarSummary:
    what = "the archive"
    with path.open("rb") as raw:
        compression = _compression(raw.read(8))
        if compression and not limits.compressed:
            raise ArchiveRejected(f"{what} is compressed; send a plain .tar")
        raw.seek(0)
        stream = _decompressed(raw, compression)
        walk = _Walk(stream, limits, compression, what)
        try:
            return walk.run()
        except _DAMAGED:
            raise ArchiveRejected(
                f"{what} is a damaged or truncated tar archive" if walk.started else walk.not_tar
            ) from None
        finally:
            stream.close()


# The header walk below is services/common/tar_guard.py's, kept in step with it.


def _compression(head: bytes) -> Compression:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return ""


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def close(self) -> None: ...


def _decompressed(raw: BinaryIO, compression: Compression) -> _Stream:
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb", format=lzma.FORMAT_XZ)
    return raw


class _Walk:
    def __init__(
        self, stream: _Stream, limits: ArchiveLimits, compression: Compression, what: str
    ) -> None:
        self.stream = stream
        self.limits = limits
        self.compression = compression
        self.what = what
        self.not_tar = NOT_AN_ARCHIVE
        self.started = False  # a first header was read
        self.members = 0
        self.unpacked = 0
        self.chain = 0  # extended headers read since the last member header
        self.header_bytes = 0  # extended headers' sizes, all added up

    def refuse(self, problem: str) -> ArchiveRejected:
        """The member being read (counted from 1 in the message) is at fault."""
        return ArchiveRejected(f"member {self.members + 1} of {self.what} {problem}", self.members)

    def run(self) -> TarSummary:
        while True:
            block = self.stream.read(_BLOCK)
            if not self.started and len(block) < _BLOCK:
                raise ArchiveRejected(self.not_tar)
            if len(block) < _BLOCK or block.count(0) == _BLOCK:
                # Where tarfile stops too: end of data, a partial block, the end marker.
                if self.chain:
                    raise self.refuse("is cut off after its extended headers")
                return TarSummary(self.compression, self.members, self.unpacked)
            self._header(block)
            self.started = True

    def _header(self, block: bytes) -> None:
        try:
            checksum = _number(block[148:156])
            size = _number(block[124:136])
            if checksum not in _checksums(block):
                raise ValueError("bad checksum")
        except ValueError:
            if not self.started:
                raise ArchiveRejected(self.not_tar) from None
            raise self.refuse("has a damaged tar header") from None
        kind = block[156]
        if size < 0:
            raise self.refuse("has a negative size")
        if kind in _EXTENDED:
            self._extended(kind, size)
        elif kind in _WITH_DATA or kind in _WITHOUT_DATA:
            self._member(block, kind, size)
        elif kind == ord("S"):
            raise self.refuse("is a sparse file, which is not accepted")
        else:
            raise self.refuse(f"has the unsupported tar type {chr(kind)!r}")

    def _extended(self, kind: int, size: int) -> None:
        self.chain += 1
        if self.chain > MAX_HEADER_CHAIN:
            raise self.refuse(f"has more than {MAX_HEADER_CHAIN} extended headers")
        self.header_bytes += size
        if self.header_bytes > self.limits.max_header_total_bytes:
            total = self.limits.max_header_total_bytes
            raise self.refuse(f"takes the extended headers past {total} bytes in all")
        limit = self.limits.max_header_bytes
        if size > limit:
            header = "pax" if kind in _PAX else "GNU long name"
            raise self.refuse(f"has a {header} header of {size} bytes (the limit is {limit})")
        data = self.stream.read(_padded(size))
        if len(data) < _padded(size):
            raise self.refuse("is cut off inside its extended headers")
        content = data[:size]
        # tarfile parses the padding too: bytes there would be records this walk never saw.
        if data.count(0, size) != len(data) - size:
            raise self.refuse("has an extended header with bytes after its end")
        if max(map(len, _DIGIT_RUNS.findall(content)), default=0) > MAX_DIGIT_RUN:
            raise self.refuse(
                f"has an extended header with more than {MAX_DIGIT_RUN} digits in a row"
            )
        if kind in _PAX:
            problem = _pax_problem(content)
            if problem:
                raise self.refuse(problem)

    def _member(self, block: bytes, kind: int, size: int) -> None:
        self.chain = 0
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveRejected(f"{self.what} has more than {self.limits.max_members} members")
        # tarfile reads an old-style regular file whose name ends in "/" as a folder.
        name = block[:100].split(b"\0", 1)[0]
        if kind not in _WITH_DATA or (kind == 0 and name.endswith(b"/")):
            return
        self.unpacked += size
        if self.unpacked > self.limits.max_unpacked_bytes:
            raise ArchiveRejected(
                f"{self.what} unpacks to more than {self.limits.max_unpacked_bytes} bytes"
            )
        self._skip(_padded(size))

    def _skip(self, count: int) -> None:
        if not self.compression:
            self.stream.seek(count, 1)  # a plain file: no need to read what is skipped
            return
        while count > 0:
            chunk = self.stream.read(min(count, _SKIP_CHUNK))
            if not chunk:
                return  # truncated: the next read ends the walk, tarfile refuses it
            count -= len(chunk)


def _pax_problem(content: bytes) -> str | None:
    """Each record is ``<length> <keyword>=<value>\\n`` and the records cover the header
    exactly; the keywords that move or split a member's data are refused."""
    position = 0
    while position < len(content):
        space = content.find(b" ", position, position + MAX_DIGIT_RUN + 1)
        digits = content[position:space]
        if space < 0 or not digits.isdigit():
            return "has a pax header record without a valid length"
        end = position + int(digits)
        record = content[space + 1 : end]
        if end > len(content) or end <= space + 1 or not record.endswith(b"\n"):
            return "has a pax header record that does not match its length"
        keyword, equals, _ = record.partition(b"=")
        if not equals or not keyword:
            return "has a pax header record without a keyword"
        if keyword == b"size":
            return "has a pax header that sets its size, which is not accepted"
        if keyword.startswith(b"GNU.sparse."):
            return "is a sparse file, which is not accepted"
        position = end
    return None


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (as tarfile's ``nti``); raises
    ValueError for anything else."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _checksums(block: bytes) -> tuple[int, int]:
    """Unsigned and signed sums, the checksum field counted as spaces (as tarfile does)."""
    unsigned = sum(block[:148]) + sum(block[156:]) + 8 * 32
    signed = unsigned - 256 * sum(1 for byte in block[:148] + block[156:] if byte > 127)
    return unsigned, signed


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


class _GuardedTarInfo(tarfile.TarInfo):
    """Checks again, where ``tarfile`` reads an extended header, that it is small: a last
    line should the walk above and ``tarfile`` ever disagree on where a header starts."""

    max_header_bytes: int = _MAX_HEADER_BYTES
    max_header_total_bytes: int = 4 << 20  # tarfile parses ~8 KiB a ms at worst

    def _proc_pax(self, tarfile: tarfile.TarFile) -> Any:
        self._refuse_large()
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> Any:
        self._refuse_large()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]

    def _refuse_large(self) -> None:
        if self.size > self.max_header_bytes:
            raise ArchiveRejected(f"an extended header of {self.size} bytes is over the limit")
