"""Tar archives checked header by header before :mod:`tarfile` reads them.

This Python's ``tarfile`` parses pax headers with regular expressions that take quadratic
time on long runs of digits (CVE-2024-6232), and the regex engine holds the GIL while it
runs: a 272-byte bundle whose pax header held 100,000 digits froze every service of the
platform for 17 s, worker thread or not. :func:`open_checked_tar` first walks the raw
512-byte headers itself, in linear time, and refuses:

- pax (``x``, ``g``, ``X``) and GNU long name/link (``L``, ``K``) headers over
  ``max_header_bytes`` (or over ``max_header_total_bytes`` in all), pax records that are
  not well formed, and digit runs over :data:`MAX_DIGIT_RUN` (what makes the regexes
  slow; a record length, a time or a hex digest is far shorter);
- more than :data:`MAX_HEADER_CHAIN` extended headers in front of one member (``tarfile``
  follows them by recursion);
- sparse files, member types ``tarfile`` would read as unknown, and a pax ``size``: each
  would make ``tarfile`` place the next header elsewhere than this walk does;
- more than ``max_members`` members or ``max_unpacked_bytes`` of file content.

Only then is the archive handed to ``tarfile``, with the compression the walk found (never
``r:*``, which could read the same bytes differently) and a :class:`tarfile.TarInfo`
subclass that checks the extended headers' size again at the point ``tarfile`` reads them.

Everything here blocks (it reads, and may decompress, the whole archive): async callers
run it in a worker thread. Model servers walk folder inputs with the SDK's copy of this walk
(``sdk/modelcloud/_archives.py``; the SDK imports no service): change both together,
``tests/contract/test_tar_walk_parity.py`` fails when they drift apart.
"""

import bz2
import gzip
import lzma
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, Protocol

__all__ = [
    "MAX_DIGIT_RUN",
    "MAX_HEADER_CHAIN",
    "TarLimits",
    "TarRejected",
    "TarSummary",
    "open_checked_tar",
    "scan_tar",
]

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


class TarRejected(ValueError):
    """The archive is refused whole. ``message`` is safe to show the sender; ``member`` is
    the 0-based index of the member at fault, when one is."""

    def __init__(self, message: str, member: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.member = member


@dataclass(frozen=True)
class TarLimits:
    max_members: int = 10_000
    max_unpacked_bytes: int = 4 << 30
    # PATH_MAX is 4096: a name, a link target and a few numbers fit twice over.
    max_header_bytes: int = 8 << 10
    # tarfile spends up to ~1.5 ms per 8 KiB header with 64-digit runs; this bounds the sum.
    max_header_total_bytes: int = 4 << 20
    compressed: bool = True  # accept .tar.gz, .tar.bz2 and .tar.xz as well as plain .tar


@dataclass(frozen=True)
class TarSummary:
    compression: Compression
    members: int
    unpacked_bytes: int


def open_checked_tar(
    path: Path, limits: TarLimits, *, what: str = "the archive"
) -> tarfile.TarFile:
    """Scan ``path`` with :func:`scan_tar`, then open it for reading with ``tarfile``.

    Raises :class:`TarRejected`, whose message starts with ``what``. The caller closes
    the result (``with`` works).
    """
    summary = scan_tar(path, limits, what=what)

    class GuardedTarInfo(_GuardedTarInfo):
        max_header_bytes = limits.max_header_bytes

    try:
        return tarfile.open(path, mode=_READ_MODE[summary.compression], tarinfo=GuardedTarInfo)
    except _DAMAGED:
        raise TarRejected(f"{what} is a damaged or truncated tar archive") from None


def scan_tar(path: Path, limits: TarLimits, *, what: str = "the archive") -> TarSummary:
    """Walk every header of the archive at ``path`` without ``tarfile``; see the module
    docstring for what is refused. Raises :class:`TarRejected`, whose message starts with
    ``what`` (or names the member at fault)."""
    # Opened outside the try: an unreadable file on our own disk is a server fault.
    with path.open("rb") as raw:
        compression = _compression(raw.read(8))
        if compression and not limits.compressed:
            raise TarRejected(f"{what} is compressed; send a plain .tar")
        raw.seek(0)
        stream = _decompressed(raw, compression)
        walk = _Walk(stream, limits, compression, what)
        try:
            return walk.run()
        except _DAMAGED:
            raise TarRejected(
                f"{what} is a damaged or truncated tar archive" if walk.started else walk.not_tar
            ) from None
        finally:
            stream.close()


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
        self, stream: _Stream, limits: TarLimits, compression: Compression, what: str
    ) -> None:
        self.stream = stream
        self.limits = limits
        self.compression = compression
        self.what = what
        kinds = ".tar, .tar.gz or .tgz" if limits.compressed else "a plain .tar"
        self.not_tar = f"{what} is not a tar archive ({kinds})"
        self.started = False  # a first header was read
        self.members = 0
        self.unpacked = 0
        self.chain = 0  # extended headers read since the last member header
        self.header_bytes = 0  # extended headers' sizes, all added up

    def refuse(self, problem: str) -> TarRejected:
        """The member being read (counted from 1 in the message) is at fault."""
        return TarRejected(f"member {self.members + 1} of {self.what} {problem}", self.members)

    def run(self) -> TarSummary:
        while True:
            block = self.stream.read(_BLOCK)
            if not self.started and len(block) < _BLOCK:
                raise TarRejected(self.not_tar)
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
                raise TarRejected(self.not_tar) from None
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
            raise TarRejected(f"{self.what} has more than {self.limits.max_members} members")
        # tarfile reads an old-style regular file whose name ends in "/" as a folder.
        name = block[:100].split(b"\0", 1)[0]
        if kind not in _WITH_DATA or (kind == 0 and name.endswith(b"/")):
            return
        self.unpacked += size
        if self.unpacked > self.limits.max_unpacked_bytes:
            raise TarRejected(
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

    max_header_bytes: int = TarLimits.max_header_bytes

    def _proc_pax(self, tarfile: tarfile.TarFile) -> Any:
        self._refuse_large()
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> Any:
        self._refuse_large()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]

    def _refuse_large(self) -> None:
        if self.size > self.max_header_bytes:
            raise TarRejected(f"an extended header of {self.size} bytes is over the limit")
