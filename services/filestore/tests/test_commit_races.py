"""The collector and an upload that reuses stored content, interleaved on purpose: the
collector deletes the blob right when the upload has checked that it is there and is about
to record its file. Whichever of the two takes the digest's lock first wins
(``files/commit_locks.py``); a file recorded pointing at nothing is never the outcome."""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from prometheus_client import CollectorRegistry

from modelcloud_testing.servers import fresh_postgres_database
from services.common.database import create_engine, session_factory
from services.filestore.blobs import local
from services.filestore.blobs.collector import BlobCollector
from services.filestore.blobs.local import LocalBlobs
from services.filestore.files.placements import is_stored
from services.filestore.tests.conftest import Stack, _stack
from services.filestore.tests.test_collector import BASE, put, sha
from services.filestore.tests.test_transfers import listed, pack, send_pack


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """SQLite (one write lock) and PostgreSQL (an advisory lock per digest)."""
    if request.param == "sqlite":
        async for value in _stack(tmp_path):
            yield value
        return
    async with fresh_postgres_database() as url:
        async for value in _stack(tmp_path, database_url=url):
            yield value


@pytest.fixture
async def sessions(stack: Stack) -> AsyncIterator[Any]:
    engine = create_engine(stack.settings.sqlalchemy_url())
    yield session_factory(engine)
    await engine.dispose()


class PausedRemoval(LocalBlobs):
    """The collector's blob store: before deleting, it lets ``before_remove`` run."""

    def __init__(self, root: Path, before_remove: Callable[[], Coroutine[Any, Any, None]]) -> None:
        super().__init__(root)
        self.before_remove = before_remove

    def remove(self, keys: list[str]) -> None:
        anyio.from_thread.run(self.before_remove)
        super().remove(keys)


class Interleaving:
    """The upload streams its first bytes, then waits for the collector to be about to
    delete; the collector then waits until the upload has checked the blob is stored.
    Before the fix the upload checks and commits right then, and the blob goes after; with
    it, the upload's check waits for the collector's lock, so it cannot come: the
    collector's wait ends after a second and the upload checks once the blob is gone."""

    def __init__(self) -> None:
        self.streaming = asyncio.Event()
        self.resumed = asyncio.Event()
        self.checked = asyncio.Event()

    async def body(self, data: bytes) -> AsyncIterator[bytes]:
        yield data[:100]
        self.streaming.set()
        await self.resumed.wait()
        yield data[100:]

    async def before_remove(self) -> None:
        self.resumed.set()
        with anyio.move_on_after(1):
            await self.checked.wait()

    async def collect(self, stack: Stack, sessions: Any) -> list[str]:
        await self.streaming.wait()
        blobs = PausedRemoval(stack.settings.data_dir.resolve() / "blobs", self.before_remove)
        gc = BlobCollector(sessions=sessions, blobs=blobs, grace_s=0, metrics=CollectorRegistry())
        return (await gc.collect()).keys


async def unreferenced(stack: Stack, data: bytes) -> None:
    await put(stack, "old.bin", data)
    assert (await stack.files.delete(f"{BASE}/files/old.bin")).status_code == 200


def assert_nothing_recorded(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"


async def test_an_upload_of_stored_content_and_the_collector_never_leave_a_broken_file(
    stack: Stack, sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"reused weights" * 100
    await unreferenced(stack, data)
    steps = Interleaving()

    async def watched(*args: Any) -> bool:
        found = await is_stored(*args)
        if steps.resumed.is_set():
            steps.checked.set()
        return found

    monkeypatch.setattr("services.filestore.files.service.is_stored", watched)
    upload = asyncio.ensure_future(
        stack.files.put(
            f"{BASE}/files/new.bin",
            content=steps.body(data),
            headers={"X-Content-SHA256": sha(data), "Content-Length": str(len(data))},
        )
    )
    collected = await steps.collect(stack, sessions)
    answer = await upload

    assert len(collected) == 1
    assert_nothing_recorded(answer)
    assert await listed(stack) == []
    await put(stack, "new.bin", data)  # the pipe sends it again: stored again
    assert (await stack.files.get(f"{BASE}/files/new.bin")).content == data


async def test_a_pack_reusing_stored_content_and_the_collector_never_leave_a_broken_file(
    stack: Stack, sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"reused config" * 100
    await unreferenced(stack, data)
    steps = Interleaving()
    real_reuse = local._reuse
    loop = asyncio.get_running_loop()

    def watched(target: Path) -> bool:  # in a worker thread
        found = real_reuse(target)
        loop.call_soon_threadsafe(steps.checked.set)
        return found

    monkeypatch.setattr(local, "_reuse", watched)
    body = pack({"config.json": data, "other.txt": b"other"})
    upload = asyncio.ensure_future(
        stack.files.post(
            f"{BASE}/packs",
            content=steps.body(body),
            headers={"Content-Type": "application/x-tar", "Content-Length": str(len(body))},
        )
    )
    collected = await steps.collect(stack, sessions)
    answer = await upload

    assert len(collected) == 1
    assert_nothing_recorded(answer)
    assert await listed(stack) == []
    assert (await send_pack(stack, body)).status_code == 201
    assert (await stack.files.get(f"{BASE}/files/config.json")).content == data
