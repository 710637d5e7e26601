"""Collecting blobs no file refers to any more (a path deleted, or pointed elsewhere).

What keeps an object:

* ``blobs/<sha256>`` (content address): an entry with that digest and no object of its own;
* ``objects/<project>/<id>`` (a direct upload): an entry whose ``object_key`` it is;
* an object holding placed blobs (a pack, ``packs/...``, or a through upload whose digest
  came last, ``objects/<id>``): any of its members still referenced as above. A pack is
  deleted whole, with its placements, only once none of its members is.

Keys of any other shape are never touched.

An upload writes its blob before it commits the file row that refers to it, so a blob may
be unreferenced for the length of that gap (a multipart object's time may even be that of
the upload's start). So the collector marks, then sweeps: an object is deleted only once
it is ``grace_s`` old *and* was already found unreferenced by a pass ``grace_s`` earlier,
and its references are checked once more right before it goes, under the per-digest lock
that every upload also takes to record its entries (``files/commit_locks.py``): an upload
that reuses stored content checks, under that lock, that it is still there.
"""

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio.to_thread
import structlog
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.database import SessionFactory, create_engine, session_factory
from services.filestore.blobs.choice import blob_store
from services.filestore.blobs.store import BlobStore, StoredObject
from services.filestore.files.commit_locks import lock_names
from services.filestore.files.models import BlobPlacement, FileEntry
from services.filestore.settings import FilestoreSettings

log = structlog.get_logger("modelcloud.filestore.collector")
_ADDRESS = re.compile(r"blobs/[0-9a-f]{2}/([0-9a-f]{64})")
_DIRECT = re.compile(r"objects/[^/]+/[^/]+")
_PLACED = re.compile(r"objects/[^/]+|packs/(?:[^/]+/)?[^/]+")


@dataclass
class Collected:
    """What one pass removed."""

    keys: list[str] = field(default_factory=list)
    bytes: int = 0
    marked: int = 0  # unreferenced, kept until their grace period is over


class BlobCollector:
    """Deletes unreferenced objects; keeps its marks between passes, so run one per
    process, again and again (:meth:`collect`)."""

    def __init__(
        self,
        *,
        sessions: SessionFactory,
        blobs: BlobStore,
        grace_s: float,
        metrics: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._blobs = blobs
        self._grace_s = grace_s
        self._marked: dict[str, float] = {}  # key: when first found unreferenced (monotonic)
        self._objects = Counter(
            "filestore_collected_objects_total",
            "Unreferenced blobs and objects deleted by the collector",
            registry=metrics,
        )
        self._bytes = Counter(
            "filestore_collected_bytes_total",
            "Bytes of unreferenced blobs and objects deleted by the collector",
            registry=metrics,
        )

    async def collect(self, *, unmarked_after_s: float | None = None) -> Collected:
        """One pass over the whole store. ``unmarked_after_s``: objects that old go without
        having been marked by an earlier pass (see :func:`collect_now`)."""
        collected = Collected()
        marked: dict[str, float] = {}
        now, clock = datetime.now(UTC), self._clock()
        old = now - timedelta(seconds=self._grace_s)
        very_old = None if unmarked_after_s is None else now - timedelta(seconds=unmarked_after_s)
        pages: Iterator[list[StoredObject]] = await anyio.to_thread.run_sync(self._blobs.objects)
        while (page := await anyio.to_thread.run_sync(next, pages, None)) is not None:
            known = [o for o in page if _kind(o.key) is not None]
            async with self._sessions() as session:
                kept = await _referenced(session, [o.key for o in known])
            unreferenced = [o for o in known if o.key not in kept]
            due: list[StoredObject] = []
            for stored in unreferenced:
                first = marked[stored.key] = self._marked.get(stored.key, clock)
                aged = very_old is not None and stored.modified_at <= very_old
                swept = stored.modified_at <= old and clock - first >= self._grace_s
                if aged or swept:
                    due.append(stored)
            if due:
                removed = await self._remove(due)
                for stored in removed:
                    marked.pop(stored.key, None)
                    collected.keys.append(stored.key)
                    collected.bytes += stored.size
        self._marked = marked
        collected.marked = len(marked)
        self._objects.inc(len(collected.keys))
        self._bytes.inc(collected.bytes)
        log.info(
            "unreferenced blobs collected",
            objects=len(collected.keys),
            bytes=collected.bytes,
            marked=collected.marked,
            first=collected.keys[:5],
        )
        return collected

    async def _remove(self, due: list[StoredObject]) -> list[StoredObject]:
        """Under the locks of their digests and keys (``files/commit_locks.py``), in one
        transaction: check once more that nothing refers to them, drop their placements,
        delete them, commit. An upload about to record an entry reading one of them waits
        for that commit, then finds it gone; or it committed first, and it is kept."""
        async with self._sessions() as session:
            keys = [o.key for o in due]
            members = select(BlobPlacement.sha256).where(col(BlobPlacement.key).in_(keys))
            digests = {m.group(1) for key in keys if (m := _ADDRESS.fullmatch(key))}
            await lock_names(session, {*keys, *digests, *(await session.exec(members)).all()})
            still = await _referenced(session, keys)
            gone = [o for o in due if o.key not in still]
            if gone:
                doomed = [o.key for o in gone]
                await session.exec(delete(BlobPlacement).where(col(BlobPlacement.key).in_(doomed)))
                await anyio.to_thread.run_sync(self._blobs.remove, doomed)
                await session.commit()
        return gone


async def collect_now(
    *, settings: FilestoreSettings, sessions: SessionFactory, blobs: BlobStore
) -> Collected:
    """One pass on demand (``modelcloud filestore collect``), with no marks of earlier
    passes to go by: what goes is only what is older than the longest upload plus the
    grace period (an object's time may be its upload's start, and its file rows follow
    within the grace period of the upload's end)."""
    collector = BlobCollector(sessions=sessions, blobs=blobs, grace_s=settings.gc_grace_s)
    return await collector.collect(unmarked_after_s=settings.upload_max_age_s + settings.gc_grace_s)


async def collect_with(settings: FilestoreSettings) -> Collected:
    """:func:`collect_now` on the database and blob store ``settings`` name (the CLI's)."""
    engine = create_engine(settings.sqlalchemy_url())
    try:
        return await collect_now(
            settings=settings, sessions=session_factory(engine), blobs=blob_store(settings)
        )
    finally:
        await engine.dispose()


async def collect_every(collector: BlobCollector, interval_s: float) -> None:
    """The background worker (``FILESTORE_GC_INTERVAL_S``): a pass at start (which marks),
    then one every ``interval_s`` (which sweeps what stayed unreferenced)."""
    while True:
        await collector.collect()
        await asyncio.sleep(interval_s)


def _kind(key: str) -> str | None:
    if _ADDRESS.fullmatch(key):
        return "address"
    if _PLACED.fullmatch(key) or _DIRECT.fullmatch(key):
        return "object"
    return None  # never ours to judge


async def _referenced(session: AsyncSession, keys: list[str]) -> set[str]:
    """Which of ``keys`` some file entry still reads."""
    digests = {m.group(1): key for key in keys if (m := _ADDRESS.fullmatch(key))}
    objects = [key for key in keys if key not in digests.values()]
    kept: set[str] = set()
    if digests:
        query = select(FileEntry.sha256).where(
            col(FileEntry.sha256).in_(digests), col(FileEntry.object_key).is_(None)
        )
        kept.update(digests[sha] for sha in (await session.exec(query)).all())
    if objects:
        own = select(FileEntry.object_key).where(col(FileEntry.object_key).in_(objects))
        kept.update(key for key in (await session.exec(own)).all() if key is not None)
        placed = (
            select(BlobPlacement.key)
            .join(FileEntry, col(FileEntry.sha256) == col(BlobPlacement.sha256))
            .where(col(BlobPlacement.key).in_(objects), col(FileEntry.object_key).is_(None))
        )
        kept.update((await session.exec(placed)).all())
    return kept
