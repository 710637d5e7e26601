"""Issue 13, finding 3: a pack whose pax header holds 100,000 digits (CVE-2024-6232 in this
Python's tarfile, 15 s of a frozen platform) is refused before tarfile reads it, naming the
member, while ``/healthz`` keeps answering; nothing is stored."""

import asyncio
import hashlib
import tarfile
import time
from collections.abc import Coroutine
from typing import Any

import httpx
import pytest

from services.filestore.tests.conftest import Stack
from services.filestore.transfers.service import PACK_SHA256

BASE = "/v1/projects/vision/models/classifier/versions/v1"
HEALTHZ_S = 3.0


def entry(name: str, kind: bytes, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while length != len(body) + len(str(length)):
        length = len(body) + len(str(length))
    return str(length).encode() + body


GOOD = entry("pax", tarfile.XHDTYPE, record(PACK_SHA256, hashlib.sha256(b"a").hexdigest()))
GOOD += entry("a.txt", tarfile.REGTYPE, b"a")


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


def send(stack: Stack, body: bytes) -> Coroutine[Any, Any, httpx.Response]:
    return stack.files.post(
        f"{BASE}/packs", content=body, headers={"Content-Type": "application/x-tar"}
    )


async def listed(stack: Stack) -> list[str]:
    return [f["path"] for f in (await stack.files.get(f"{BASE}/files")).json()]


async def test_a_pax_header_of_100000_digits_is_a_422_and_healthz_keeps_answering(
    stack: Stack,
) -> None:
    bomb = (
        GOOD + entry("pax", tarfile.XHDTYPE, b"1" * 100_000) + entry("b", b"0", b"") + bytes(1024)
    )

    answer, slowest = await slowest_answer(stack.files, send(stack, bomb))

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"] == [
        {
            "field": "pack[1]",
            "message": "member 2 of the pack has a pax header of 100000 bytes (the limit is 8192)",
        }
    ]
    assert slowest < HEALTHZ_S
    assert await listed(stack) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            entry("L", tarfile.GNUTYPE_LONGNAME, b"n" * 9000),
            "member 2 of the pack has a GNU long name header of 9000 bytes",
        ),
        (
            entry("pax", tarfile.XHDTYPE, record("comment", "7" * 70)),
            "member 2 of the pack has an extended header with more than 64 digits in a row",
        ),
        (entry("pax", tarfile.XHDTYPE, record("size", "0")), "member 2 of the pack has a pax"),
    ],
)
async def test_extended_headers_are_checked_before_tarfile_reads_them(
    stack: Stack, extra: bytes, message: str
) -> None:
    body = GOOD + extra + entry("b.txt", tarfile.REGTYPE, b"b") + bytes(1024)

    answer = await send(stack, body)

    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert error["field"] == "pack[1]"
    assert error["message"].startswith(message)
    assert await listed(stack) == []


async def test_a_pack_with_well_formed_pax_headers_is_stored(stack: Stack) -> None:
    answer = await send(stack, GOOD + bytes(1024))

    assert answer.status_code == 201, answer.text
    assert await listed(stack) == ["a.txt"]
