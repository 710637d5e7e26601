"""The tar header walk exists twice: ``services/common/tar_guard.py`` for the platform and
``sdk/modelcloud/_archives.py`` for model servers (the SDK imports nothing of the services,
an import rule). This keeps the two copies in step: over the same hostile and ordinary
archives, both accept with the same summary or refuse with the same message."""

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from modelcloud._archives import ArchiveLimits, ArchiveRejected, _scan_tar
from modelcloud._archives import TarSummary as ArchiveSummary
from services.common.tar_guard import TarLimits, TarRejected, TarSummary, scan_tar

MEMBERS, BYTES = 5, 4096


def _entry(name: str, kind: bytes, data: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def _tar(*entries: bytes) -> bytes:
    return b"".join(entries) + bytes(1024)


def _pax(records: str) -> bytes:
    return _entry("pax", tarfile.XHDTYPE, records.encode())


def _written(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


FILE = _entry("cloud_model.py", tarfile.REGTYPE, b"import modelcloud\n")
CORPUS = {
    "ordinary": _written({"cloud_model.py": b"import modelcloud\n", "a/b.txt": b"x" * 600}),
    "ordinary, gzipped": gzip.compress(_written({"cloud_model.py": b"x"})),
    "long name through pax": _written({"a" * 300: b"x"}),
    "pax of 100,000 digits": _tar(_entry("pax", tarfile.XHDTYPE, b"1" * 100_000), FILE),
    "pax of a long digit run": _tar(_pax("30 comment=" + "1" * 200 + "\n"), FILE),
    "pax size record": _tar(_pax("13 size=100\n"), FILE),
    "gnu long name of 20 KiB": _tar(_entry("././@LongLink", b"L", b"n" * 20_000), FILE),
    "nine extended headers": _tar(*[_entry("pax", tarfile.XHDTYPE, b"")] * 9, FILE),
    "sparse member": _tar(_entry("s", tarfile.GNUTYPE_SPARSE, b"x"), FILE),
    "unknown member type": _tar(_entry("u", b"Q", b"x"), FILE),
    "too many members": _tar(*[_entry(f"f{i}", tarfile.REGTYPE, b"x") for i in range(6)]),
    "too many bytes": _tar(_entry("big", tarfile.REGTYPE, b"x" * 5000)),
    "truncated": _written({"cloud_model.py": b"x" * 2000})[:1200],
    "not a tar": os.urandom(2048),
    "empty": b"",
}


def _platform(path: Path) -> tuple[str, object]:
    return _decision(
        lambda: scan_tar(path, TarLimits(max_members=MEMBERS, max_unpacked_bytes=BYTES))
    )


def _model_server(path: Path) -> tuple[str, object]:
    limits = ArchiveLimits(max_members=MEMBERS, max_unpacked_bytes=BYTES)
    return _decision(lambda: _scan_tar(path, limits))


def _decision(scan: Callable[[], TarSummary | ArchiveSummary]) -> tuple[str, object]:
    try:
        summary = scan()
    except (TarRejected, ArchiveRejected) as refused:
        return "refused", (refused.message, refused.member)
    return "accepted", (summary.compression, summary.members, summary.unpacked_bytes)


# Each side names what it expected instead in its own words (a bundle, a folder input).
NOT_TAR = {"not a tar", "empty"}


@pytest.mark.parametrize("case", CORPUS)
def test_both_walks_decide_alike(case: str, tmp_path: Path) -> None:
    path = tmp_path / "archive"
    path.write_bytes(CORPUS[case])
    platform, model_server = _platform(path), _model_server(path)
    if case in NOT_TAR:
        assert platform[0] == model_server[0] == "refused"
    else:
        assert platform == model_server


def test_the_corpus_holds_both_answers(tmp_path: Path) -> None:
    """A corpus all refused (or all accepted) would let the copies drift unseen."""
    answers = set()
    for case, data in CORPUS.items():
        path = tmp_path / case.replace(" ", "_").replace(",", "")
        path.write_bytes(data)
        answers.add(_platform(path)[0])
    assert answers == {"accepted", "refused"}
