"""Issue 13, finding 3: one tiny bundle must not freeze the platform. A deeply nested
``modelcloud.yml`` and a tar pax header of 100,000 digits (CVE-2024-6232) are refused with
a 422 naming the file, while ``/healthz`` keeps answering; the raw tar header walk refuses
what would let ``tarfile`` read the archive differently from it."""

import asyncio
import gzip
import hashlib
import io
import tarfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelcloud_testing.registries import Registry, make_service, tar_bundle, upload_version
from services.registry.bundles.archive import BundleRejected, check_bundle
from services.registry.interfaces.build_file import BuildFileRejected, parse_build_file

SOURCE = b"import modelcloud\n"
HEALTHZ_S = 3.0  # the slowest /healthz answer accepted while an attack is processed


async def slowest_answer(
    client: httpx.AsyncClient, work: Coroutine[Any, Any, httpx.Response]
) -> tuple[httpx.Response, float]:
    """Run ``work`` while calling ``/healthz`` back to back; its answer, and the slowest
    ``/healthz`` answer seen meanwhile (a blocked event loop shows up there)."""
    assert (await client.get("/healthz")).status_code == 200  # warm
    task = asyncio.create_task(work)
    slowest = 0.0
    while not task.done():
        started = time.perf_counter()
        assert (await client.get("/healthz")).status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
        # In-process, /healthz never suspends: give the upload its turn until it is done.
        await asyncio.wait({task}, timeout=0.01)
    return await task, slowest


def entry(name: str, kind: bytes, data: bytes = b"", *, padding: bytes = b"") -> bytes:
    """One raw tar entry: a ustar header and its data, padded (with ``padding`` first)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    blocks = data + padding
    return info.tobuf(format=tarfile.USTAR_FORMAT) + blocks + bytes(-len(blocks) % 512)


def raw_tar(*entries: bytes) -> bytes:
    return b"".join(entries) + bytes(1024)


def pax(*records: tuple[str, str]) -> bytes:
    """Pax records, each ``<length> <key>=<value>\\n`` with the length counting itself."""
    out = b""
    for key, value in records:
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while length != len(body) + len(str(length)):
            length = len(body) + len(str(length))
        out += str(length).encode() + body
    return out


def rejection(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "bundle.tar"
    path.write_bytes(data)
    with pytest.raises(BundleRejected) as caught:
        check_bundle(path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return caught.value.message


MODEL = entry("cloud_model.py", tarfile.REGTYPE, SOURCE)
PAX_BOMB = gzip.compress(raw_tar(entry("pax", tarfile.XHDTYPE, b"1" * 100_000), MODEL))
NESTED_YAML = tar_bundle({"cloud_model.py": SOURCE, "modelcloud.yml": "[" * 20_000 + "]" * 20_000})


# ----------------------------------------------------------------------------- the attacks


async def test_a_deeply_nested_build_file_is_a_422_and_healthz_keeps_answering(
    registry: Registry,
) -> None:
    await make_service(registry.client)
    assert len(NESTED_YAML) < 400  # the finding's bundle was 195 bytes

    answer, slowest = await slowest_answer(
        registry.client, upload_version(registry.client, bundle=NESTED_YAML)
    )

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    (error,) = answer.json()["errors"]
    assert error["field"] == "bundle.modelcloud.yml"
    assert "nest" in error["message"]  # libyaml's own limit (1000) or ours (64)
    assert slowest < HEALTHZ_S


async def test_a_pax_header_of_100000_digits_is_a_422_and_healthz_keeps_answering(
    registry: Registry,
) -> None:
    await make_service(registry.client)
    assert len(PAX_BOMB) < 400  # the finding's bundle was 272 bytes

    answer, slowest = await slowest_answer(
        registry.client, upload_version(registry.client, bundle=PAX_BOMB)
    )

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert error == {
        "field": "bundle",
        "message": "member 1 of the bundle has a pax header of 100000 bytes (the limit is 8192)",
    }
    assert slowest < HEALTHZ_S
    versions = await registry.client.get("/v1/projects/vision/services/classifier/versions")
    assert versions.json() == []


async def test_a_1_mib_source_is_read_while_healthz_keeps_answering(registry: Registry) -> None:
    # ast.parse holds the GIL throughout: 5 s for this file, in a worker thread or not.
    await make_service(registry.client)
    source = "import modelcloud\n\n@modelcloud.command('hi')\ndef hi(_, inputs):\n    pass\n"
    filler = "def f(x):\n    return {'a': [1, 2, 3], 'b': x + 1}\n"
    source += filler * (((1 << 20) - len(source)) // len(filler))
    bundle = tar_bundle({"cloud_model.py": source})
    assert len(bundle) < 16 << 10

    answer, slowest = await slowest_answer(
        registry.client, upload_version(registry.client, bundle=bundle)
    )

    assert answer.status_code == 201, answer.text
    assert [c["name"] for c in answer.json()["interface"]["commands"]] == ["hi"]
    assert slowest < HEALTHZ_S


async def test_source_errors_still_name_their_line(registry: Registry) -> None:
    await make_service(registry.client)
    bundle = tar_bundle({"cloud_model.py": "x = 1\ndef broken(:\n"})

    answer = await upload_version(registry.client, bundle=bundle)

    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"] == [
        {"field": "bundle", "message": "cloud_model.py: line 2: invalid syntax"}
    ]


# ----------------------------------------------------------------------------- YAML limits


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: " + "[" * 65 + "]" * 65, "line 1: nests deeper than 64 levels"),
        ("".join(f"{' ' * i}k{i}:\n" for i in range(70)) + " " * 70 + "x: 1\n", "line 65: nests"),
        ("python: " + "1" * 5000 + "\n", "is not valid YAML: a value cannot be read"),
        ("python: '3.11'\n---\npython: '3.10'\n", "line 2: holds more than one YAML document"),
        ("x: " + "#" * (256 << 10), "is 262147 bytes, over the limit of 262144"),
    ],
)
def test_build_files_are_bounded(text: str, message: str) -> None:
    with pytest.raises(BuildFileRejected) as caught:
        parse_build_file(text, has_requirements=False)

    ((path, problem),) = caught.value.errors
    assert path == "modelcloud.yml"
    assert problem.startswith(message)


def test_a_build_file_just_inside_the_depth_limit_is_read() -> None:
    nested = "x: " + "[" * 63 + "]" * 63  # 64 levels with the top mapping
    with pytest.raises(BuildFileRejected) as caught:  # read, then refused as an unknown key
        parse_build_file(nested, has_requirements=False)
    assert caught.value.errors == [("modelcloud.yml.x", "is not a known key")]


# ----------------------------------------------------------------------------- tar headers


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [entry("long", tarfile.GNUTYPE_LONGNAME, b"a" * 10_000), MODEL],
            "member 1 of the bundle has a GNU long name header of 10000 bytes (the limit is 8192)",
        ),
        (
            [MODEL, entry("pax", tarfile.XGLTYPE, pax(("comment", "1" * 65))), MODEL],
            "member 2 of the bundle has an extended header with more than 64 digits in a row",
        ),
        (
            # The record says 3 bytes of data; tarfile would skip 3, this walk too: refused
            # because a pax size moves where the next header starts.
            [entry("pax", tarfile.XHDTYPE, pax(("size", "3"))), MODEL],
            "member 1 of the bundle has a pax header that sets its size, which is not accepted",
        ),
        (
            # A record hidden in the padding after the declared size: tarfile parses it.
            [entry("pax", tarfile.XHDTYPE, pax(("path", "a")), padding=pax(("size", "0"))), MODEL],
            "member 1 of the bundle has an extended header with bytes after its end",
        ),
        (
            [entry("pax", tarfile.XHDTYPE, b"99 path=a\n"), MODEL],
            "member 1 of the bundle has a pax header record that does not match its length",
        ),
        (
            [entry("pax", tarfile.XHDTYPE, pax(("GNU.sparse.map", "0,1"))), MODEL],
            "member 1 of the bundle is a sparse file, which is not accepted",
        ),
        (
            [*(entry("L", tarfile.GNUTYPE_LONGNAME, b"name") for _ in range(9)), MODEL],
            "member 1 of the bundle has more than 8 extended headers",
        ),
        ([entry("v", b"V"), MODEL], "member 1 of the bundle has the unsupported tar type 'V'"),
        ([entry("s", tarfile.GNUTYPE_SPARSE), MODEL], "member 1 of the bundle is a sparse file"),
    ],
)
def test_tar_headers_that_tarfile_would_choke_on_or_read_differently_are_refused(
    tmp_path: Path, entries: list[bytes], message: str
) -> None:
    for compress in (False, True):
        data = raw_tar(*entries)
        assert rejection(tmp_path, gzip.compress(data) if compress else data).startswith(message)


def test_extended_headers_are_bounded_in_all(tmp_path: Path) -> None:
    # Each header passes alone; tarfile would still spend ~1.5 ms on each of them.
    header = entry("pax", tarfile.XHDTYPE, pax(("comment", ("1" * 64 + "a") * 120)))
    members = [header + entry(f"f{n}", tarfile.REGTYPE) for n in range(600)]

    message = rejection(tmp_path, raw_tar(MODEL, *members))

    assert message.endswith(f"takes the extended headers past {4 << 20} bytes in all")


def test_extended_headers_that_real_tools_write_still_pass(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        archive.pax_headers = {"comment": "d4e5f6a7b8c9" * 3}  # as `git archive` writes
        for name in ["cloud_model.py", "models/" + "w" * 200 + ".bin"]:
            info = tarfile.TarInfo(name)
            info.size = len(SOURCE)
            info.mtime = 1_700_000_000.25  # a fractional time goes into a pax record
            archive.addfile(info, io.BytesIO(SOURCE))
    data = buffer.getvalue()
    path = tmp_path / "bundle.tgz"
    path.write_bytes(data)

    bundle = check_bundle(path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    assert bundle.files == ("cloud_model.py", "models/" + "w" * 200 + ".bin")
