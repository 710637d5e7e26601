"""Byte ranges of a download (RFC 9110, one range): a pull cut half way asks for the rest."""

import re
from dataclasses import dataclass
from typing import ClassVar

from services.common.problems import ServiceProblem

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class RangeNotSatisfiable(ServiceProblem):
    status: ClassVar[int] = 416
    slug: ClassVar[str] = "range-not-satisfiable"
    title: ClassVar[str] = "Range not satisfiable"


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int  # inclusive, as in the header

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The range ``header`` asks of a file of ``size`` bytes; None for the whole file (no
    header, or one this server ignores, as RFC 9110 lets it: several ranges, other units).
    Raises :class:`RangeNotSatisfiable` for a range that starts past the end."""
    if header is None or not (match := _RANGE.fullmatch(header.strip())):
        return None
    first, last = match.groups()
    if not first:  # the last N bytes
        if not last or int(last) == 0:
            raise RangeNotSatisfiable(f"{header!r}: no bytes asked for")
        return ByteRange(max(0, size - int(last)), size - 1) if size else None
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(f"{header!r}: the file has {size} bytes")
    return ByteRange(start, end)
