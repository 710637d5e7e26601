"""Build logs: appended to a file per build as lines arrive, and fanned out live to the
readers following them (Server-Sent Events). A reader that joins late gets the file so far,
then the live lines, without a gap or a duplicate. Only the event loop writes lines.

A log is never read whole: a build step may print hundreds of MiB (a 143 MiB log once cost
its reader as much memory), so readers get it in chunks read in a worker thread."""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

import anyio.to_thread

CHUNK_BYTES = 64 << 10
MAX_LINE_BYTES = 1 << 20


class BuildLogs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._followers: dict[UUID, list[asyncio.Queue[str | None]]] = {}
        self._open: set[UUID] = set()

    def path(self, build_id: UUID) -> Path:
        return self.folder / f"{build_id}.log"

    def begin(self, build_id: UUID) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path(build_id).write_text("", encoding="utf-8")
        self._open.add(build_id)

    def write(self, build_id: UUID, line: str) -> None:
        line = line.rstrip("\n")
        with self.path(build_id).open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        for queue in self._followers.get(build_id, []):
            queue.put_nowait(line)

    def end(self, build_id: UUID) -> None:
        self._open.discard(build_id)
        for queue in self._followers.pop(build_id, []):
            queue.put_nowait(None)

    def size(self, build_id: UUID) -> int:
        """The log's bytes so far (0 for a build with none yet)."""
        try:
            return self.path(build_id).stat().st_size
        except FileNotFoundError:
            return 0

    async def chunks(self, build_id: UUID, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` of the log, a chunk at a time (a running build's log
        grows meanwhile: what lies past ``end`` is left for the next read)."""
        try:
            log = self.path(build_id).open("rb")
        except FileNotFoundError:
            return
        with log:
            log.seek(start)
            position = start
            while position < end:
                chunk = await anyio.to_thread.run_sync(log.read, min(CHUNK_BYTES, end - position))
                if not chunk:
                    return
                position += len(chunk)
                yield chunk

    async def follow(self, build_id: UUID, *, queued: bool = False) -> AsyncIterator[str]:
        """Every line so far, then new ones as they come, until the build ends. A build the
        caller saw ``queued`` is followed from its first line once it starts, unless it
        has run meanwhile (its log is there)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        live = build_id in self._open or (queued and not self.path(build_id).exists())
        if live:
            self._followers.setdefault(build_id, []).append(queue)
        # Lines are written on the event loop, and nothing awaits between subscribing and
        # opening the file and taking its size: every line is either in the file up to
        # that size or in the queue.
        try:
            log: BinaryIO | None = self.path(build_id).open("rb")
        except FileNotFoundError:
            log = None
        try:
            if log is not None:
                with log:
                    async for line in _lines(log, os.fstat(log.fileno()).st_size):
                        yield line
            while live and (item := await queue.get()) is not None:
                yield item
        finally:
            followers = self._followers.get(build_id, [])
            if queue in followers:
                followers.remove(queue)


async def _lines(log: BinaryIO, end: int) -> AsyncIterator[str]:
    """The lines of ``log`` up to byte ``end`` (a line boundary: lines are written whole),
    read a chunk at a time in a worker thread."""
    position = 0
    pending = b""
    while position < end:
        chunk = await anyio.to_thread.run_sync(log.read, min(CHUNK_BYTES, end - position))
        if not chunk:
            break
        position += len(chunk)
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace")
        if len(pending) > MAX_LINE_BYTES:  # one endless line (a progress bar): in pieces
            yield pending.decode("utf-8", errors="replace")
            pending = b""
    if pending:
        yield pending.decode("utf-8", errors="replace")
