"""Issue 13, findings 3 and 5: a model's folder input is bounded before it is unpacked. A
zip bomb is refused (nothing is left on disk) and a tar pax header of 100,000 digits
(CVE-2024-6232) is refused while the model server keeps answering ``/healthz``."""

import asyncio
import gzip
import io
import struct
import tarfile
import time
import zipfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelcloud import Model
from modelcloud._archives import ArchiveLimits
from modelcloud._files import FilePolicy, FileRejected, unpack_archive
from modelcloud.data_types import file, text

HEALTHZ_S = 3.0


def folder_model(calls: list[str]) -> Model:
    model = Model()

    @model.command("count", inputs={"folder": file(is_directory=True)}, outputs={"n": text()})
    def count(_: object, inputs: dict[str, str]) -> dict[str, str]:
        calls.append(inputs["folder"])
        return {"n": str(sum(1 for p in Path(inputs["folder"]).rglob("*") if p.is_file()))}

    return model


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_declared_sizes(data: bytes, size: int) -> bytes:
    """The zip with every central-directory entry claiming ``size`` unpacked bytes."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        out[at + 24 : at + 28] = struct.pack("<I", size)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def pax_bomb() -> bytes:
    """272 bytes: a pax header of 100,000 digits, then a file."""
    digits = b"1" * 100_000
    header = tarfile.TarInfo("pax")
    header.type = tarfile.XHDTYPE
    header.size = len(digits)
    member = tarfile.TarInfo("a.txt")
    member.size = 1
    raw = (
        header.tobuf(format=tarfile.USTAR_FORMAT)
        + digits
        + bytes(-len(digits) % 512)
        + member.tobuf(format=tarfile.USTAR_FORMAT)
        + b"a"
        + bytes(511 + 1024)
    )
    return gzip.compress(raw)


async def slowest_answer(
    client: httpx.AsyncClient, work: Coroutine[Any, Any, httpx.Response]
) -> tuple[httpx.Response, float]:
    """Run ``work`` while calling ``/healthz`` back to back: its answer, and the slowest
    ``/healthz`` answer seen meanwhile (a blocked event loop shows up there)."""
    assert (await client.get("/healthz")).status_code == 200
    task = asyncio.create_task(work)
    slowest = 0.0
    while not task.done():
        started = time.perf_counter()
        assert (await client.get("/healthz")).status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.wait({task}, timeout=0.01)  # in-process /healthz never suspends
    return await task, slowest


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------------- through HTTP


async def test_a_zip_bomb_folder_input_is_a_422_and_nothing_is_unpacked(serve, tmp_path):
    calls: list[str] = []
    client = serve(folder_model(calls))
    bomb = zip_of({"zeros.bin": bytes(20 << 20)})  # 20 MiB of zeros in ~20 KiB
    assert len(bomb) < 64 << 10

    answer = await client.post("/count", files={"folder": ("w.zip", bomb, "application/zip")})

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert error["field"] == "folder"
    assert "times its size (at most 200 is accepted)" in error["message"]
    assert calls == []
    assert not any(p.stat().st_size > 1 << 20 for p in files_under(tmp_path))


async def test_a_pax_header_of_100000_digits_is_a_422_and_healthz_keeps_answering(serve, tmp_path):
    calls: list[str] = []
    client = serve(folder_model(calls))
    bomb = pax_bomb()
    assert len(bomb) < 400

    answer, slowest = await slowest_answer(
        client, client.post("/count", files={"folder": ("w.tgz", bomb, "application/gzip")})
    )

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert error == {
        "field": "folder",
        "message": "member 1 of the archive has a pax header of 100000 bytes (the limit is 8192)",
    }
    assert calls == []
    assert slowest < HEALTHZ_S


# ----------------------------------------------------------------------------- unpacking


def test_a_zip_declaring_more_than_the_cap_writes_nothing(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(with_declared_sizes(zip_of({"a.bin": b"a", "b.bin": b"b"}), 3 << 30))

    with pytest.raises(FileRejected, match=f"unpacks to more than {1 << 30} bytes"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_whose_directory_understates_its_sizes_is_refused_and_removed(tmp_path):
    # The central directory says 1 byte; the data inflates to 4 MiB. Nothing past what was
    # declared is ever written, and the mismatch refuses the archive whole.
    archive = tmp_path / "a.zip"
    members = {"ok.txt": b"ok", "zeros.bin": bytes(4 << 20)}
    archive.write_bytes(with_declared_sizes(zip_of(members), 1))

    with pytest.raises(FileRejected, match="damaged or unsupported zip"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_member_count_and_unpacked_size_are_capped(tmp_path, kind):
    members = {f"f{i}.txt": b"x" * 100 for i in range(4)}
    archive = tmp_path / f"a.{kind}"
    if kind == "zip":
        archive.write_bytes(zip_of(members))
    else:
        with tarfile.open(archive, "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    few = FilePolicy(archive_limits=ArchiveLimits(max_members=3)).archive_limits
    with pytest.raises(FileRejected, match="has more than 3 members"):
        unpack_archive(archive, tmp_path / "few", few)
    small = ArchiveLimits(max_unpacked_bytes=399)
    with pytest.raises(FileRejected, match="unpacks to more than 399 bytes"):
        unpack_archive(archive, tmp_path / "small", small)
    assert not (tmp_path / "few").exists()
    assert not (tmp_path / "small").exists()
    unpacked = unpack_archive(archive, tmp_path / "out", ArchiveLimits(max_unpacked_bytes=400))
    assert sorted(p.name for p in files_under(unpacked)) == sorted(members)


def test_a_compressed_tar_bomb_is_refused_by_its_ratio(tmp_path):
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 20 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))

    with pytest.raises(FileRejected, match="times its size"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
