"""Live updates of runs for the page: what each ingest or status change stored, passed to
the readers of the project's stream (Server-Sent Events) as it happens.

In one process: each reader has a bounded queue; a reader too slow to keep up gets a
``resync`` event (reload what you show) instead of an unbounded backlog. Several replicas
of the metrics service would carry these over the event bus instead.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

QUEUE_SIZE = 1000
POINTS_PER_EVENT = 5000  # a bigger batch becomes "reload this run's series"


@dataclass(frozen=True)
class Update:
    run_id: UUID
    owner: str
    shared: bool
    kind: str  # "points", "run" (created or changed) or "reload"
    data: dict[str, Any]

    def visible_to(self, user: str) -> bool:
        return self.shared or self.owner == user


@dataclass(eq=False)  # each reader is itself (kept in sets)
class Reader:
    user: str
    queue: asyncio.Queue[Update] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    behind: bool = False


class LiveHub:
    def __init__(self) -> None:
        self._readers: dict[str, set[Reader]] = {}

    def join(self, project: str, user: str) -> Reader:
        reader = Reader(user)
        self._readers.setdefault(project, set()).add(reader)
        return reader

    def leave(self, project: str, reader: Reader) -> None:
        self._readers.get(project, set()).discard(reader)

    def publish(self, project: str, update: Update) -> None:
        for reader in self._readers.get(project, ()):
            if not update.visible_to(reader.user) or reader.behind:
                continue
            try:
                reader.queue.put_nowait(update)
            except asyncio.QueueFull:
                reader.behind = True  # it reloads everything once it catches up
