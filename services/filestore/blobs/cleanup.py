"""Removing what uploads cut short left behind: a crash (of the file store, or a client
that never came back) skips the clean-up an upload does when it fails, so its temporary
files and unfinished multipart uploads would stay forever.

Run at start. Several file store replicas may share one data folder and one bucket, so
"not this process's" is no proof that an upload is over: only what is older than the
longest an upload may take (``FILESTORE_UPLOAD_MAX_AGE_S``) is removed. Every upload older
than that is refused when it ends (``files/expiry.py``), so nothing removed here could
still have been committed.
"""

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.to_thread
import structlog

from services.filestore.blobs.store import BlobStore
from services.filestore.settings import FilestoreSettings

log = structlog.get_logger("modelcloud.filestore.cleanup")


def scratch_folder(settings: FilestoreSettings) -> Path:
    """Where packs are received before they are stored (a folder per pack)."""
    return settings.data_dir.resolve() / "uploads"


async def clean_abandoned_uploads(
    *, settings: FilestoreSettings, blobs: BlobStore, now: datetime | None = None
) -> list[str]:
    """Remove scratch folders, temporary blob files and multipart uploads that no upload
    has touched for ``upload_max_age_s``; returns what was removed."""
    before = (now or datetime.now(UTC)) - timedelta(seconds=settings.upload_max_age_s)
    removed = await anyio.to_thread.run_sync(_drop_scratch, scratch_folder(settings), before)
    removed += await anyio.to_thread.run_sync(blobs.drop_unfinished, before)
    if removed:
        log.info(
            "abandoned uploads removed",
            count=len(removed),
            older_than=before.isoformat(),
            first=removed[:5],
        )
    return removed


def _drop_scratch(folder: Path, before: datetime) -> list[str]:
    if not folder.is_dir():
        return []
    dropped = []
    for entry in os.scandir(folder):
        path = Path(entry.path)
        try:
            if _last_written(path) >= before:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # its upload finished meanwhile
            continue
        except OSError as exc:  # left for an operator: the file store serves all the same
            log.warning("cannot remove an abandoned upload", path=str(path), error=str(exc))
            continue
        dropped.append(f"uploads/{entry.name}")
    return dropped


def _last_written(path: Path) -> datetime:
    """The newest modification time of ``path`` and, for a folder, of what it holds (a
    pack's scratch folder keeps its creation time while the pack file inside grows)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for inner in path.rglob("*"):
            newest = max(newest, inner.lstat().st_mtime)
    return datetime.fromtimestamp(newest, UTC)
