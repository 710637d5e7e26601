"""The garbage collector: blobs no file refers to any more are deleted (local folder and
S3: content addresses, direct uploads, packs once none of their members is referenced),
and never a blob an upload in flight is about to refer to."""

import hashlib
import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
import typer
from prometheus_client import CollectorRegistry
from sqlmodel import select
from typer.testing import CliRunner

from services.cli import register
from services.common.database import create_engine, session_factory
from services.filestore.blobs.collector import BlobCollector, collect_now
from services.filestore.blobs.local import LocalBlobs
from services.filestore.blobs.s3 import S3Blobs
from services.filestore.blobs.store import BlobStore, blob_key
from services.filestore.files.models import BlobPlacement
from services.filestore.tests.conftest import Stack, bucket_client
from services.filestore.tests.test_transfers import direct_upload, pack, send_pack

BASE = "/v1/projects/vision/models/classifier/versions/v1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs_of(stack: Stack) -> BlobStore:
    if stack.settings.storage == "s3":
        return S3Blobs.from_settings(stack.settings)
    return LocalBlobs(stack.settings.data_dir.resolve() / "blobs")


@pytest.fixture
async def sessions(stack: Stack) -> AsyncIterator[Any]:
    engine = create_engine(stack.settings.sqlalchemy_url())
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def s3_sessions(s3_stack: Stack) -> AsyncIterator[Any]:
    engine = create_engine(s3_stack.settings.sqlalchemy_url())
    yield session_factory(engine)
    await engine.dispose()


def collector(stack: Stack, sessions: Any, grace_s: float = 0) -> BlobCollector:
    return BlobCollector(
        sessions=sessions, blobs=blobs_of(stack), grace_s=grace_s, metrics=CollectorRegistry()
    )


def stored_keys(stack: Stack) -> set[str]:
    return {o.key for page in blobs_of(stack).objects() for o in page}


async def put(stack: Stack, path: str, data: bytes) -> None:
    answer = await stack.files.put(
        f"{BASE}/files/{path}", content=data, headers={"X-Content-SHA256": sha(data)}
    )
    assert answer.status_code == 201, answer.text


async def test_a_blob_no_file_refers_to_is_collected_and_counted(
    stack: Stack, sessions: Any
) -> None:
    await put(stack, "old.bin", b"old weights" * 100)
    await put(stack, "kept.bin", b"kept weights" * 100)
    await put(stack, "copy.bin", b"old weights" * 100)  # same content, second path
    assert (await stack.files.delete(f"{BASE}/files/old.bin")).status_code == 200
    registry = CollectorRegistry()
    gc = BlobCollector(sessions=sessions, blobs=blobs_of(stack), grace_s=0, metrics=registry)

    assert (await gc.collect()).keys == []  # copy.bin still reads it
    assert (await stack.files.delete(f"{BASE}/files/copy.bin")).status_code == 200
    collected = await gc.collect()

    assert collected.keys == [blob_key(sha(b"old weights" * 100))]
    assert collected.bytes == 1100
    assert stored_keys(stack) == {blob_key(sha(b"kept weights" * 100))}
    assert registry.get_sample_value("filestore_collected_objects_total") == 1
    assert registry.get_sample_value("filestore_collected_bytes_total") == 1100
    assert (await stack.files.get(f"{BASE}/files/kept.bin")).content == b"kept weights" * 100
    # The same content sent again is stored again, not linked to the collected blob.
    linked = await stack.files.post(
        f"{BASE}/link", json={"files": [{"path": "old.bin", "sha256": sha(b"old weights" * 100)}]}
    )
    assert linked.json()["missing"] == ["old.bin"]
    await put(stack, "old.bin", b"old weights" * 100)
    assert (await stack.files.get(f"{BASE}/files/old.bin")).content == b"old weights" * 100


async def test_a_blob_written_moments_ago_is_kept_until_its_grace_is_over(
    stack: Stack, sessions: Any
) -> None:
    """An upload in flight: its blob is committed, its file row not yet."""
    blobs = blobs_of(stack)
    writer = blobs.writer(sha(b"in flight"), 9)
    writer.write(b"in flight")
    writer.commit(sha(b"in flight"))
    gc = collector(stack, sessions, grace_s=3600)

    first = await gc.collect()
    assert first.keys == []
    assert first.marked == 1
    assert blobs.exists(sha(b"in flight"))

    # Old enough, but found unreferenced only now: kept for one more grace period.
    path = stack.settings.data_dir.resolve() / "blobs" / blob_key(sha(b"in flight"))
    clock = [1000.0]
    fresh = BlobCollector(sessions=sessions, blobs=blobs, grace_s=3600, clock=lambda: clock[0])
    os.utime(path, (path.stat().st_atime - 7200, path.stat().st_mtime - 7200))
    assert (await fresh.collect()).keys == []
    assert blobs.exists(sha(b"in flight"))

    # A grace period later, still unreferenced: collected.
    clock[0] += 3601
    assert (await fresh.collect()).keys == [blob_key(sha(b"in flight"))]


async def test_content_collected_while_its_upload_travels_is_not_recorded(
    stack: Stack, sessions: Any
) -> None:
    """An upload of content stored already writes no blob; if that blob is collected
    before the upload ends, the path must not be recorded pointing at nothing."""
    data = b"model weights" * 1000
    await put(stack, "a.bin", data)
    assert (await stack.files.delete(f"{BASE}/files/a.bin")).status_code == 200
    gc = collector(stack, sessions)

    async def body() -> AsyncIterator[bytes]:
        yield data[:5000]
        assert (await gc.collect()).keys == [blob_key(sha(data))]
        yield data[5000:]

    answer = await stack.files.put(
        f"{BASE}/files/b.bin",
        content=body(),
        headers={"X-Content-SHA256": sha(data), "Content-Length": str(len(data))},
    )
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert (await stack.files.get(f"{BASE}/files")).json() == []
    await put(stack, "b.bin", data)  # sent again: stored again
    assert (await stack.files.get(f"{BASE}/files/b.bin")).content == data


async def test_keys_of_unknown_shape_are_never_touched(stack: Stack, sessions: Any) -> None:
    root = stack.settings.data_dir.resolve() / "blobs" / "blobs"
    root.mkdir(parents=True, exist_ok=True)
    (root / "README").write_text("not a blob")
    (root / "ab").mkdir(exist_ok=True)
    (root / "ab" / "notes.txt").write_text("not a blob either")
    assert (await collector(stack, sessions).collect()).keys == []
    assert (root / "README").exists()
    assert (root / "ab" / "notes.txt").exists()


@pytest.mark.s3
async def test_a_pack_is_collected_only_once_none_of_its_files_is_referenced(
    s3_stack: Stack, s3_sessions: Any
) -> None:
    files = {"a.py": b"a = 1\n", "b.py": b"b = 2\n"}
    assert (await send_pack(s3_stack, pack(files))).status_code == 201
    (pack_key,) = [k for k in stored_keys(s3_stack) if k.startswith("packs/")]
    gc = collector(s3_stack, s3_sessions)

    assert (await s3_stack.files.delete(f"{BASE}/files/a.py")).status_code == 200
    assert (await gc.collect()).keys == []
    assert (await s3_stack.files.get(f"{BASE}/files/b.py")).content == b"b = 2\n"

    assert (await s3_stack.files.delete(f"{BASE}/files/b.py")).status_code == 200
    assert (await gc.collect()).keys == [pack_key]
    assert stored_keys(s3_stack) == set()
    async with s3_sessions() as session:
        assert (await session.exec(select(BlobPlacement))).all() == []
    # Sent again, the files are stored again (not "found" in the deleted pack).
    assert (await send_pack(s3_stack, pack(files))).status_code == 201
    assert (await s3_stack.files.get(f"{BASE}/files/a.py")).content == b"a = 1\n"


@pytest.mark.s3
async def test_direct_uploads_and_through_uploads_on_s3_are_collected(
    s3_stack: Stack, s3_sessions: Any
) -> None:
    big = bytes(range(256)) * (24 << 10)  # 6 MiB: two parts
    assert (await direct_upload(s3_stack, big, path="direct.bin")).status_code == 201
    through = await s3_stack.files.put(f"{BASE}/files/through.bin", content=b"no digest first")
    assert through.status_code == 201  # streamed into objects/<id>, placed
    await put(s3_stack, "kept.bin", b"kept")
    before = stored_keys(s3_stack)
    assert any(k.count("/") == 2 and k.startswith("objects/vision/") for k in before)
    for path in ("direct.bin", "through.bin"):
        assert (await s3_stack.files.delete(f"{BASE}/files/{path}")).status_code == 200

    collected = await collector(s3_stack, s3_sessions).collect()

    assert len(collected.keys) == 2
    assert stored_keys(s3_stack) == {blob_key(sha(b"kept"))}
    assert collected.bytes == len(big) + len(b"no digest first")
    client = bucket_client(s3_stack)
    assert (
        client.list_objects_v2(Bucket=s3_stack.settings.s3_bucket, Prefix="objects/")["KeyCount"]
        == 0
    )


async def test_the_local_listing_skips_temporary_files(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    writer = blobs.writer(None, None)
    writer.write(b"half")
    assert [o for page in blobs.objects() for o in page] == []
    writer.abort()


async def test_the_file_store_runs_the_collector_and_reports_it(stack: Stack) -> None:
    metrics = (await stack.files.get("/metrics")).text
    assert "filestore_collected_objects_total 0.0" in metrics
    assert "filestore_collected_bytes_total 0.0" in metrics
    assert (await stack.files.get("/readyz")).status_code == 200


async def test_a_pass_on_demand_removes_only_what_is_older_than_any_upload(
    stack: Stack, sessions: Any
) -> None:
    """No marks of earlier passes: only what is older than the longest upload plus the
    grace period goes, so no upload can still be about to refer to it."""
    await put(stack, "old.bin", b"old")
    await put(stack, "recent.bin", b"recent")
    for path in ("old.bin", "recent.bin"):
        assert (await stack.files.delete(f"{BASE}/files/{path}")).status_code == 200
    settings = stack.settings.model_copy(update={"upload_max_age_s": 3600, "gc_grace_s": 600})
    blob = stack.settings.data_dir.resolve() / "blobs" / blob_key(sha(b"old"))
    then = blob.stat().st_mtime - 4300
    os.utime(blob, (then, then))

    collected = await collect_now(settings=settings, sessions=sessions, blobs=blobs_of(stack))

    assert collected.keys == [blob_key(sha(b"old"))]
    assert stored_keys(stack) == {blob_key(sha(b"recent"))}


async def test_an_operator_collects_on_demand_from_the_command_line(stack: Stack) -> None:
    await put(stack, "old.bin", b"old")
    assert (await stack.files.delete(f"{BASE}/files/old.bin")).status_code == 200
    blob = stack.settings.data_dir.resolve() / "blobs" / blob_key(sha(b"old"))
    then = blob.stat().st_mtime - 3 * 24 * 3600  # older than any upload may take
    os.utime(blob, (then, then))
    cli = typer.Typer()
    register(cli)

    ran = await anyio.to_thread.run_sync(
        partial(
            CliRunner().invoke,
            cli,
            ["filestore", "collect", "--data-dir", str(stack.settings.data_dir)],
        )
    )

    assert ran.exit_code == 0, ran.output
    assert "removed 1 objects, 3 bytes" in ran.output
    assert not blob.exists()
