"""The embedded event bus: the RabbitMQ bus's semantics, durable in one SQLite file.

The all-in-one platform runs every service in one process without a broker; this bus keeps
what RabbitMQ would keep, so a restart loses nothing:

* queues are rows (name, patterns, max_deliveries) and outlive the process: a queue keeps
  receiving events while its consumer is not subscribed again yet. ``start`` declares every
  queue of ``CONSUMER_QUEUES``, so events published before a consumer's first start wait too;
* ``publish`` inserts one message row per matching queue, all in one transaction, before it
  returns. The file runs in WAL mode with ``synchronous=NORMAL``: a committed publish survives
  a crash of the process; a power cut may lose the last few commits, never corrupt the file;
* a message is ``ready``, ``inflight`` (its handler is running) or ``dead``. Its delivery count
  is raised before the handler runs, the row is deleted after the handler returns, and a
  failure puts it back as ``ready`` after a short backoff, or marks it ``dead`` once it has
  been delivered ``max_deliveries`` times. Rows left ``inflight`` by a crash or a ``close``
  become ``ready`` again: redelivery, as for an unacknowledged AMQP message. A ``dead`` row
  records why (``dead_reason``) and is the queue's dead-letter queue: a replay makes it
  ``ready`` again with no deliveries counted, a purge deletes it.

Each queue has one consumer task that handles one message at a time, oldest first: the
simplest way to keep order, and enough for one process. A failed message waits out its backoff
while later ones go ahead, so one bad envelope does not stall its queue. Only one bus may open
a file at a time (it takes in-flight rows back on start); an operator's tool opens it with
``take_over=False`` beside the running platform.

SQLite calls run on one private worker thread, which serialises them without a lock and keeps
the event loop free. Consumers wake on publish and poll every ``poll_interval_s`` otherwise.
"""

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

from pydantic import ValidationError

from modelcloud_proto.events import CONSUMER_QUEUES, Envelope
from services.common.events.bus import (
    DELIVERY_LIMIT,
    POISON,
    BusUnavailable,
    DeadLetter,
    EnvelopeRejected,
    Handler,
    dead_letter_id,
    topic_matches,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bus_queue (
    name TEXT PRIMARY KEY,
    patterns TEXT NOT NULL,
    max_deliveries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bus_message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL REFERENCES bus_queue (name) ON DELETE CASCADE,
    envelope_id TEXT,
    body BLOB NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'inflight', 'dead')),
    available_at REAL NOT NULL DEFAULT 0,
    dead_reason TEXT
);
CREATE INDEX IF NOT EXISTS bus_message_next ON bus_message (queue, state, seq);
"""

# Columns added after the first release; a file made before gets them on open.
_ADDED_COLUMNS = {"dead_reason": "ALTER TABLE bus_message ADD COLUMN dead_reason TEXT"}


class _Delivery(NamedTuple):
    seq: int
    body: bytes
    deliveries: int
    max_deliveries: int


class _Next(NamedTuple):
    """The claimed message, or none and how long until a retried one comes due."""

    delivery: _Delivery | None
    due_in_s: float | None


class _Store:
    """Synchronous SQLite access; every method is one transaction, called on the bus thread."""

    def __init__(self, path: Path | None) -> None:
        self._db = sqlite3.connect(
            ":memory:" if path is None else path, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(bus_message)")}
        for column, statement in _ADDED_COLUMNS.items():
            if column not in columns:
                self._db.execute(statement)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def recover(self, queue: str | None = None) -> int:
        """Make messages left in flight (by a crash or a close) deliverable again: those of
        ``queue``, or of every queue."""
        with self._transaction() as db:
            query = "UPDATE bus_message SET state = 'ready' WHERE state = 'inflight'"
            if queue is None:
                return db.execute(query).rowcount
            return db.execute(query + " AND queue = ?", (queue,)).rowcount

    def declare(self, queue: str, patterns: Sequence[str], max_deliveries: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO bus_queue (name, patterns, max_deliveries) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE "
                "SET patterns = excluded.patterns, max_deliveries = excluded.max_deliveries",
                (queue, json.dumps(list(patterns)), max_deliveries),
            )

    def declare_missing(self, queues: Mapping[str, Sequence[str]], max_deliveries: int) -> None:
        """Declare ``queues``; one that exists gets these patterns and keeps the
        ``max_deliveries`` its consumer subscribed with."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO bus_queue (name, patterns, max_deliveries) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET patterns = excluded.patterns",
                [
                    (queue, json.dumps(list(patterns)), max_deliveries)
                    for queue, patterns in queues.items()
                ],
            )

    def publish(self, messages: Sequence[tuple[str, str | None, bytes]]) -> int:
        """Store each ``(routing key, envelope id, body)`` once per queue bound to its key."""
        with self._transaction() as db:
            queues = [
                (name, json.loads(patterns))
                for name, patterns in db.execute("SELECT name, patterns FROM bus_queue")
            ]
            rows = [
                (name, envelope_id, body)
                for routing_key, envelope_id, body in messages
                for name, patterns in queues
                if any(topic_matches(pattern, routing_key) for pattern in patterns)
            ]
            db.executemany(
                "INSERT INTO bus_message (queue, envelope_id, body) VALUES (?, ?, ?)", rows
            )
            return len(rows)

    def claim(self, queue: str, now: float) -> _Next:
        """Mark the oldest due message of ``queue`` in flight and count the delivery."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT m.seq, m.body, m.deliveries + 1, q.max_deliveries "
                "FROM bus_message m JOIN bus_queue q ON q.name = m.queue "
                "WHERE m.queue = ? AND m.state = 'ready' AND m.available_at <= ? "
                "ORDER BY m.seq LIMIT 1",
                (queue, now),
            ).fetchone()
            if row is None:
                (due,) = db.execute(
                    "SELECT min(available_at) FROM bus_message WHERE queue = ? AND state = 'ready'",
                    (queue,),
                ).fetchone()
                return _Next(None, None if due is None else max(due - now, 0.0))
            delivery = _Delivery(*row)
            db.execute(
                "UPDATE bus_message SET state = 'inflight', deliveries = ? WHERE seq = ?",
                (delivery.deliveries, delivery.seq),
            )
            return _Next(delivery, None)

    def ack(self, seq: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM bus_message WHERE seq = ?", (seq,))

    def retry(self, seq: int, available_at: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE bus_message SET state = 'ready', available_at = ? WHERE seq = ?",
                (available_at, seq),
            )

    def bury(self, seq: int, reason: str, deliveries: int) -> None:
        """Dead-letter ``seq``; ``deliveries``: how many times a handler was called."""
        with self._transaction() as db:
            db.execute(
                "UPDATE bus_message SET state = 'dead', dead_reason = ?, deliveries = ? "
                "WHERE seq = ?",
                (reason, deliveries, seq),
            )

    def dead_letter_counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT q.name, count(m.seq) FROM bus_queue q LEFT JOIN bus_message m "
            "ON m.queue = q.name AND m.state = 'dead' GROUP BY q.name ORDER BY q.name"
        )
        return dict(rows)

    def dead_letters(self, queue: str, limit: int | None) -> list[tuple[int, DeadLetter]]:
        rows = self._db.execute(
            "SELECT seq, envelope_id, body, coalesce(dead_reason, ?), deliveries "
            "FROM bus_message WHERE queue = ? AND state = 'dead' ORDER BY seq LIMIT ?",
            (DELIVERY_LIMIT, queue, -1 if limit is None else limit),
        )
        return [
            (seq, DeadLetter(dead_letter_id(envelope_id, bytes(body)), bytes(body), why, count))
            for seq, envelope_id, body, why, count in rows
        ]

    def replay(self, queue: str, ids: Collection[str] | None) -> int:
        """Make dead letters deliverable again, in their old place (oldest first)."""
        seqs = [
            seq for seq, letter in self.dead_letters(queue, None) if ids is None or letter.id in ids
        ]
        with self._transaction() as db:
            db.executemany(
                "UPDATE bus_message SET state = 'ready', deliveries = 0, available_at = 0, "
                "dead_reason = NULL WHERE seq = ? AND state = 'dead'",
                [(seq,) for seq in seqs],
            )
        return len(seqs)

    def purge(self, queue: str) -> int:
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM bus_message WHERE queue = ? AND state = 'dead'", (queue,)
            ).rowcount


class LocalBus:
    """:class:`~services.common.events.bus.EventBus` in one SQLite file (``None``: in memory).

    A failed delivery is retried after ``retry_backoff_s`` times 2 to the number of earlier
    failures, at most ``max_backoff_s``. :meth:`publish_raw` stores bytes as they are, which
    is how a test puts a poison message on the bus. ``queues`` are declared at start (with
    ``max_deliveries`` until their consumer subscribes); an envelope over
    ``max_message_bytes`` is refused, as RabbitMQ refuses one over its ``max_message_size``.
    ``take_over=False`` opens a file another bus may be using (``modelcloud events dlq``):
    it leaves in-flight messages and queues as they are.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        poll_interval_s: float = 0.5,
        retry_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        queues: Mapping[str, Sequence[str]] = CONSUMER_QUEUES,
        max_deliveries: int = 5,
        max_message_bytes: int = 16 << 20,
        take_over: bool = True,
    ) -> None:
        self._path = path
        self._queues = dict(queues)
        self._max_deliveries = max_deliveries
        self._max_message_bytes = max_message_bytes
        self._take_over = take_over
        self._poll_interval_s = poll_interval_s
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._store: _Store | None = None
        self._consumers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        """Open (or create) the file and take back messages a previous run left in flight."""
        async with self._lock:
            if self._store is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-bus")
            loop = asyncio.get_running_loop()
            try:
                store = await loop.run_in_executor(executor, _Store, self._path)
                recovered = 0
                if self._take_over:
                    recovered = await loop.run_in_executor(executor, store.recover)
                    await loop.run_in_executor(
                        executor, store.declare_missing, self._queues, self._max_deliveries
                    )
            except sqlite3.Error as exc:
                executor.shutdown(wait=False)
                raise BusUnavailable(f"cannot open the local bus at {self._path}: {exc}") from exc
            self._executor, self._store = executor, store
            if recovered:
                log.info("local bus redelivers %d envelopes left in flight", recovered)

    async def ready(self) -> None:
        if self._store is None:
            raise BusUnavailable("the local bus is not open")

    async def close(self) -> None:
        """Stop the consumers (a running handler is cancelled and its envelope redelivered on
        the next start) and close the file."""
        async with self._lock:
            consumers, self._consumers = self._consumers, {}
            for task in consumers.values():
                task.cancel()
            await asyncio.gather(*consumers.values(), return_exceptions=True)
            self._wake.clear()
            store, executor = self._store, self._executor
            if store is None or executor is None:
                return
            try:
                if self._take_over:
                    # Queued after any claim a cancelled consumer left running on the thread.
                    await asyncio.get_running_loop().run_in_executor(executor, store.recover)
                await asyncio.get_running_loop().run_in_executor(executor, store.close)
            finally:
                self._store = self._executor = None
                executor.shutdown(wait=False)

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Store the batch in one transaction; an envelope over ``max_message_bytes`` refuses
        the whole batch (nothing stored) with :class:`EnvelopeRejected`."""
        messages: list[tuple[str, str | None, bytes]] = [
            (envelope.type, str(envelope.id), envelope.model_dump_json().encode())
            for envelope in envelopes
        ]
        too_large = {
            envelope.id: f"{len(body)} bytes, over the bus's {self._max_message_bytes}"
            for envelope, (_, _, body) in zip(envelopes, messages, strict=True)
            if len(body) > self._max_message_bytes
        }
        if too_large:
            raise EnvelopeRejected(too_large)
        await self._publish(messages)

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Store ``body`` unchecked under ``routing_key``, like a raw AMQP publish."""
        await self._publish([(routing_key, None, body)])

    async def _publish(self, messages: list[tuple[str, str | None, bytes]]) -> None:
        if not messages:
            return
        try:
            await self._call(lambda store: store.publish(messages))
        except sqlite3.Error as exc:
            raise BusUnavailable(f"local bus could not store the envelopes: {exc}") from exc
        for wake in self._wake.values():
            wake.set()

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, max_deliveries: int = 5
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if queue in self._consumers:
            raise ValueError(f"queue {queue} already has a consumer on this bus")
        await self._call(lambda store: store.declare(queue, patterns, max_deliveries))
        self._wake[queue] = asyncio.Event()
        self._consumers[queue] = asyncio.create_task(
            self._consume(queue, handler), name=f"local-bus-{queue}"
        )
        log.info("consuming %s (%s), max_deliveries=%d", queue, ", ".join(patterns), max_deliveries)

    async def unsubscribe(self, queue: str) -> None:
        task = self._consumers.pop(queue, None)
        self._wake.pop(queue, None)
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # A handler cancelled mid-way leaves its envelope in flight: deliver it again.
        await self._call(lambda store: store.recover(queue))

    async def dead_letter_counts(self) -> dict[str, int]:
        return await self._call(lambda store: store.dead_letter_counts())

    async def dead_letters(self, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
        rows = await self._call(lambda store: store.dead_letters(queue, limit))
        return [letter for _, letter in rows]

    async def replay_dead_letters(self, queue: str, *, ids: Collection[str] | None = None) -> int:
        replayed = await self._call(lambda store: store.replay(queue, ids))
        wake = self._wake.get(queue)
        if wake is not None:
            wake.set()
        log.info("replayed %d dead letters of %s", replayed, queue)
        return replayed

    async def purge_dead_letters(self, queue: str) -> int:
        purged = await self._call(lambda store: store.purge(queue))
        log.info("purged %d dead letters of %s", purged, queue)
        return purged

    async def _call(self, work: Callable[[_Store], T]) -> T:
        if self._store is None:
            await self.start()
        store, executor = self._store, self._executor
        if store is None or executor is None:
            raise BusUnavailable("the local bus was closed")
        return await asyncio.get_running_loop().run_in_executor(executor, partial(work, store))

    async def _consume(self, queue: str, handler: Handler) -> None:
        wake = self._wake[queue]
        while True:
            wake.clear()  # before looking, so that a publish during the look is not missed
            wait_s = self._poll_interval_s
            try:
                claimed = await self._call(lambda store: store.claim(queue, time.time()))
                if claimed.delivery is not None:
                    await self._deliver(queue, handler, claimed.delivery)
                    continue
                if claimed.due_in_s is not None:
                    wait_s = min(wait_s, claimed.due_in_s)
            except Exception:
                log.exception("local bus consumer of %s failed, retrying", queue)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=wait_s)

    async def _deliver(self, queue: str, handler: Handler, delivery: _Delivery) -> None:
        try:
            envelope = Envelope.model_validate_json(delivery.body)
        except ValidationError as exc:
            log.warning(
                "poison message dead-lettered: queue=%s seq=%d errors=%d",
                queue,
                delivery.seq,
                exc.error_count(),
            )
            await self._call(
                lambda store: store.bury(delivery.seq, POISON, delivery.deliveries - 1)
            )
            return
        try:
            await handler(envelope)
        except Exception:
            if delivery.deliveries >= delivery.max_deliveries:
                log.exception(
                    "handler failed, envelope dead-lettered: queue=%s event_id=%s type=%s "
                    "deliveries=%d",
                    queue,
                    envelope.id,
                    envelope.type,
                    delivery.deliveries,
                )
                await self._call(
                    lambda store: store.bury(delivery.seq, DELIVERY_LIMIT, delivery.deliveries)
                )
                return
            backoff = min(
                self._retry_backoff_s * 2 ** (delivery.deliveries - 1), self._max_backoff_s
            )
            log.exception(
                "handler failed, envelope retried in %.2fs: queue=%s event_id=%s type=%s "
                "deliveries=%d/%d",
                backoff,
                queue,
                envelope.id,
                envelope.type,
                delivery.deliveries,
                delivery.max_deliveries,
            )
            await self._call(lambda store: store.retry(delivery.seq, time.time() + backoff))
            return
        await self._call(lambda store: store.ack(delivery.seq))
