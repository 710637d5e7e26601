"""A bundle stored before the registry checked archives at upload is checked again when the
builder unpacks it: a pax header of 100,000 digits (CVE-2024-6232) fails the fetch step at
once instead of holding the builder for seconds, and nothing is unpacked."""

import asyncio
import gzip
import io
import tarfile
import time
from pathlib import Path

import pytest

from services.builder.backends.base import StepFailed
from services.builder.bundles import STEP, _unpack


def _pax_bomb() -> bytes:
    header = tarfile.TarInfo("pax")
    header.type = tarfile.XHDTYPE
    data = b"1" * 100_000
    header.size = len(data)
    model = tarfile.TarInfo("cloud_model.py")
    source = b"import modelcloud\n"
    model.size = len(source)
    raw = io.BytesIO()
    for info, body in ((header, data), (model, source)):
        raw.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        raw.write(body + bytes(-len(body) % 512))
    raw.write(bytes(1024))
    return gzip.compress(raw.getvalue())


async def test_a_stored_pax_bomb_fails_the_fetch_step_without_holding_the_loop(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "bundle.tar"
    archive.write_bytes(_pax_bomb())
    source = tmp_path / "source"
    source.mkdir()

    started = time.perf_counter()
    with pytest.raises(StepFailed) as failed:
        await asyncio.to_thread(_unpack, archive, source)

    assert failed.value.step == STEP
    assert "the bundle" in failed.value.reason
    assert time.perf_counter() - started < 3  # tarfile alone spent 17 s on this header
    assert list(source.iterdir()) == []


def test_a_plain_bundle_still_unpacks(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.tar"
    with tarfile.open(archive, "w:gz") as bundle:
        info = tarfile.TarInfo("cloud_model.py")
        info.size = 18
        bundle.addfile(info, io.BytesIO(b"import modelcloud\n"))
    source = tmp_path / "source"
    source.mkdir()
    _unpack(archive, source)
    assert (source / "cloud_model.py").read_bytes() == b"import modelcloud\n"
