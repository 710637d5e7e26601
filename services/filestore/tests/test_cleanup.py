"""Temporary files and multipart uploads that a crash cut short are removed at start;
those of an upload still in flight (another replica's, sharing the folder) are not."""

import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.filestore.blobs.cleanup import clean_abandoned_uploads
from services.filestore.blobs.local import LocalBlobs
from services.filestore.blobs.s3 import S3Blobs
from services.filestore.settings import FilestoreSettings
from services.filestore.tests.conftest import Stack, _stack, bucket_client, s3_settings

DAY = 24 * 3600


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago."""
    then = datetime.now(UTC).timestamp() - seconds
    os.utime(path, (then, then))


def leave_crashed_uploads(data_dir: Path) -> dict[str, Path]:
    """What a file store killed mid-upload leaves: a pack's scratch folder and a blob's
    temporary file, long ago; and the same from an upload still running elsewhere."""
    scratch = data_dir / "uploads"
    temporary = data_dir / "blobs" / "blobs"
    for folder in (scratch / "tmpcrashed", scratch / "tmprunning", temporary):
        folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "pack": scratch / "tmpcrashed" / "pack.tar",
        "blob": temporary / ".tmp-crashed",
        "running pack": scratch / "tmprunning" / "pack.tar",
        "running blob": temporary / ".tmp-running",
    }
    for path in paths.values():
        path.write_bytes(b"half an upload")
    for name in ("pack", "blob"):
        age(paths[name], 2 * DAY)
    age(paths["pack"].parent, 2 * DAY)
    age(paths["running pack"].parent, 2 * DAY)  # an old folder whose pack still grows
    return paths


async def test_the_file_store_removes_crashed_uploads_when_it_starts(tmp_path: Path) -> None:
    paths = leave_crashed_uploads(tmp_path / "filestore")
    async with contextlib.aclosing(_stack(tmp_path)) as stacks:  # type: ignore[type-var]
        stack = await anext(stacks)
        answer = await stack.files.get("/v1/projects/vision/models")
        assert answer.status_code == 200
        assert not paths["pack"].parent.exists()
        assert not paths["blob"].exists()
        assert paths["running pack"].exists()
        assert paths["running blob"].exists()


async def test_only_what_is_older_than_the_longest_upload_is_removed(tmp_path: Path) -> None:
    paths = leave_crashed_uploads(tmp_path)
    settings = FilestoreSettings(data_dir=tmp_path, upload_max_age_s=3 * DAY)
    blobs = LocalBlobs(tmp_path / "blobs")

    assert await clean_abandoned_uploads(settings=settings, blobs=blobs) == []

    settings = FilestoreSettings(data_dir=tmp_path, upload_max_age_s=DAY)
    removed = await clean_abandoned_uploads(settings=settings, blobs=blobs)
    assert sorted(removed) == ["blobs/.tmp-crashed", "uploads/tmpcrashed"]
    assert [p.name for p in paths.values() if p.exists()] == ["pack.tar", ".tmp-running"]


@pytest.mark.s3
async def test_unfinished_multipart_uploads_are_aborted(tmp_path: Path, s3_endpoint: str) -> None:
    settings = FilestoreSettings(data_dir=tmp_path, **s3_settings(tmp_path, s3_endpoint))  # type: ignore[arg-type]
    blobs = S3Blobs.from_settings(settings)
    blobs.ready()
    writer = blobs.writer(None, 20 << 20)
    writer.write(bytes(9 << 20))  # one part sent, then the service "crashed"
    stack = Stack(registry=None, files=None, settings=settings)  # type: ignore[arg-type]
    client = bucket_client(stack)
    assert len(client.list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", [])) == 1

    # (moto dates every multipart upload 2010-11-10: which are in flight cannot be shown.)
    later = datetime.now(UTC) + timedelta(seconds=settings.upload_max_age_s + 60)
    removed = await clean_abandoned_uploads(settings=settings, blobs=blobs, now=later)
    assert len(removed) == 1
    assert client.list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", []) == []
    writer.abort()  # nothing left to abort: no error
