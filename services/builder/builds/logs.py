"""Build logs: appended to a file per build as lines arrive, and fanned out live to the
readers following them (Server-Sent Events). A reader that joins late gets the file so far,
then the live lines, without a gap or a duplicate. Only the event loop writes lines."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID


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

    def tail(self, build_id: UUID, lines: int) -> list[str]:
        try:
            text = self.path(build_id).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-lines:]

    async def follow(self, build_id: UUID, *, queued: bool = False) -> AsyncIterator[str]:
        """Every line so far, then new ones as they come, until the build ends. A build the
        caller saw ``queued`` is followed from its first line once it starts, unless it
        has run meanwhile (its log is there)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        live = build_id in self._open or (queued and not self.path(build_id).exists())
        if live:
            self._followers.setdefault(build_id, []).append(queue)
        # Lines are written on the event loop, and nothing awaits between subscribing and
        # reading the file: every line is either in the file read here or in the queue.
        try:
            written = self.path(build_id).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            written = ""
        try:
            for line in written.splitlines():
                yield line
            while live and (item := await queue.get()) is not None:
                yield item
        finally:
            followers = self._followers.get(build_id, [])
            if queue in followers:
                followers.remove(queue)
