"""One conformance suite for both event buses: the embedded SQLite bus and RabbitMQ.

Every test runs against each bus through :class:`BusKit`, which hands out new bus
instances on the same storage (the same SQLite file, or the same broker), so a test can
"restart" the bus the way a service restarts. Event types start with a word unique to the
test: the RabbitMQ exchange is shared, and other suites' queues must not see these events.
"""

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from modelcloud_proto.events import CONSUMER_QUEUES, Envelope
from services.common.events.bus import (
    DELIVERY_LIMIT,
    EXCHANGE,
    POISON,
    BusUnavailable,
    DeadLetter,
    EnvelopeRejected,
    EventBus,
)
from services.common.events.local import LocalBus
from services.common.events.rabbitmq import RabbitBus

RABBITMQ = os.environ.get("MODELCLOUD_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
TIMEOUT_S = 10.0


class BusKit:
    """Bus instances, queue names and raw publishing for one test, cleaned up afterwards."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self._db = tmp_path / "events.db"
        self._buses: list[EventBus] = []
        self._queues: list[str] = []

    async def bus(
        self,
        *,
        reconnect_interval_s: float = 2.0,
        queues: Mapping[str, Sequence[str]] | None = None,
        max_message_bytes: int = 16 << 20,
    ) -> EventBus:
        """A started bus; it declares ``queues`` at start (none by default: the platform's
        own queues are not for these tests to fill on a shared broker)."""
        bus: EventBus
        if self.kind == "local":
            bus = LocalBus(
                self._db,
                poll_interval_s=0.1,
                queues=queues or {},
                max_message_bytes=max_message_bytes,
            )
        else:
            bus = RabbitBus(
                RABBITMQ,
                name=f"test-{self.prefix}",
                reconnect_interval_s=reconnect_interval_s,
                queues=queues or {},
                max_message_bytes=max_message_bytes,
            )
        await bus.start()
        self._buses.append(bus)
        return bus

    def queue(self) -> str:
        name = f"test-{self.prefix}-{len(self._queues)}"
        self._queues.append(name)
        return name

    async def publish_raw(self, bus: EventBus, routing_key: str, body: bytes) -> None:
        if isinstance(bus, LocalBus):
            await bus.publish_raw(routing_key, body)
            return
        connection = await aio_pika.connect(RABBITMQ)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EXCHANGE)
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, routing_key)

    async def cleanup(self) -> None:
        for bus in self._buses:
            await bus.close()
        if self.kind == "rabbitmq" and self._queues:
            connection = await aio_pika.connect(RABBITMQ)
            async with connection:
                channel = await connection.channel()
                for queue in self._queues:
                    await channel.queue_delete(queue)
                    await channel.queue_delete(f"{queue}.dlq")


@pytest.fixture(params=["local", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BusKit]:
    kit = BusKit(request.param, tmp_path)
    try:
        yield kit
    finally:
        await kit.cleanup()


class Recorder:
    """A handler that records each call and fails its first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[Envelope] = []
        self.processed: asyncio.Queue[Envelope] = asyncio.Queue()
        self._failures = failures

    async def __call__(self, envelope: Envelope) -> None:
        self.calls.append(envelope)
        if len(self.calls) <= self._failures:
            raise RuntimeError(f"failure {len(self.calls)} on purpose")
        self.processed.put_nowait(envelope)

    async def next(self) -> Envelope:
        return await asyncio.wait_for(self.processed.get(), TIMEOUT_S)

    async def take(self, count: int) -> list[Envelope]:
        return [await self.next() for _ in range(count)]


async def always_fails(calls: list[Envelope], envelope: Envelope) -> None:
    calls.append(envelope)
    raise RuntimeError("always fails on purpose")


def envelope(event_type: str, n: int = 0) -> Envelope:
    return Envelope(
        type=event_type, version=1, occurred_at=datetime.now(UTC), producer="test", data={"n": n}
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = TIMEOUT_S) -> None:
    """Poll ``check`` (for states nothing notifies about, like a dead-letter queue)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def dead_letters(bus: EventBus, queue: str, count: int) -> list[bytes]:
    return [letter.body for letter in await dead_letter_records(bus, queue, count)]


async def dead_letter_records(bus: EventBus, queue: str, count: int) -> list[DeadLetter]:
    async def arrived() -> bool:
        return len(await bus.dead_letters(queue)) >= count

    await eventually(arrived)
    return await bus.dead_letters(queue)


# ----------------------------------------------------------------------------- routing, order


async def test_routes_by_topic_pattern(kit: BusKit) -> None:
    bus = await kit.bus()
    p = kit.prefix
    requested, built = Recorder(), Recorder()
    await bus.subscribe(kit.queue(), [f"{p}.registry.*.requested"], requested)
    await bus.subscribe(kit.queue(), [f"{p}.builder.#"], built)

    types = [
        "registry.build.requested",
        "registry.project.created",
        "builder.build.started",
        "registry.build.requested.late",
        "builder",
        "builder.deployment.replica.restarted",
        "registry.requested",
        "registry.publish.requested",
        "builderx.build.started",
    ]
    await bus.publish([envelope(f"{p}.{t}") for t in types])
    # Delivery is in order, so once the last event arrived every earlier one has too.
    await bus.publish([envelope(f"{p}.registry.last.requested"), envelope(f"{p}.builder.last")])
    await _until_type(requested, f"{p}.registry.last.requested")
    await _until_type(built, f"{p}.builder.last")

    assert [e.type.removeprefix(f"{p}.") for e in requested.calls] == [
        "registry.build.requested",
        "registry.publish.requested",
        "registry.last.requested",
    ]
    assert [e.type.removeprefix(f"{p}.") for e in built.calls] == [
        "builder.build.started",
        "builder",
        "builder.deployment.replica.restarted",
        "builder.last",
    ]


async def _until_type(recorder: Recorder, event_type: str) -> None:
    while (await recorder.next()).type != event_type:
        pass


async def test_delivers_every_envelope_once_in_order(kit: BusKit) -> None:
    bus = await kit.bus()
    queue = kit.queue()
    recorder = Recorder()
    await bus.subscribe(queue, [f"{kit.prefix}.#"], recorder)
    sent = [envelope(f"{kit.prefix}.registry.version.registered", n) for n in range(30)]
    for batch in (sent[:10], sent[10:25], sent[25:]):
        await bus.publish(batch)

    received = await recorder.take(len(sent))

    assert [e.id for e in received] == [e.id for e in sent]
    assert received[7] == sent[7]
    assert await bus.dead_letters(queue) == []


async def test_events_published_before_the_consumer_first_started_wait_for_it(
    kit: BusKit,
) -> None:
    queue = kit.queue()
    pattern = f"{kit.prefix}.registry.version.*"
    # The producer's bus starts first; the consumer has never run on this bus or broker.
    producing = await kit.bus(queues={queue: (pattern,)})
    sent = [envelope(f"{kit.prefix}.registry.version.online", n) for n in range(3)]
    await producing.publish(sent)

    consuming = await kit.bus(queues={queue: (pattern,)})
    recorder = Recorder()
    await consuming.subscribe(queue, [pattern], recorder)

    assert [e.id for e in await recorder.take(3)] == [e.id for e in sent]


async def test_the_platform_queues_are_declared_by_default(tmp_path: Path) -> None:
    # The embedded platform's bus: the gateway subscribes after the registry published.
    bus = LocalBus(tmp_path / "events.db", poll_interval_s=0.1)
    try:
        await bus.start()
        online = envelope("registry.version.online")
        await bus.publish([online])
        recorder = Recorder()
        await bus.subscribe("gateway", CONSUMER_QUEUES["gateway"], recorder)
        assert (await recorder.next()).id == online.id
        assert set(await bus.dead_letter_counts()) >= set(CONSUMER_QUEUES)
    finally:
        await bus.close()


async def test_an_envelope_too_large_for_the_bus_is_rejected_by_id(kit: BusKit) -> None:
    queue = kit.queue()
    bus = await kit.bus(max_message_bytes=1024)
    recorder = Recorder()
    await bus.subscribe(queue, [f"{kit.prefix}.#"], recorder)
    small = envelope(f"{kit.prefix}.registry.build.requested")
    large = envelope(f"{kit.prefix}.registry.build.requested").model_copy(
        update={"data": {"blob": "x" * 2000}}
    )

    with pytest.raises(EnvelopeRejected) as rejected:
        await bus.publish([small, large])
    assert set(rejected.value.reasons) == {large.id}

    # The bus stays usable: the rejected envelope did not break the publishing channel.
    await bus.publish([small])
    assert (await recorder.next()).id == small.id


async def test_ready_answers_while_started_and_raises_once_closed(kit: BusKit) -> None:
    bus = await kit.bus()
    await bus.ready()
    await bus.close()
    with pytest.raises(BusUnavailable):
        await bus.ready()


# ----------------------------------------------------------------------------- failures


async def test_failing_handler_gets_the_envelope_again_until_it_succeeds(kit: BusKit) -> None:
    bus = await kit.bus()
    queue = kit.queue()
    recorder = Recorder(failures=2)
    await bus.subscribe(queue, [f"{kit.prefix}.#"], recorder, max_deliveries=5)
    event = envelope(f"{kit.prefix}.builder.build.succeeded")
    await bus.publish([event])

    assert (await recorder.next()).id == event.id
    # A later event is handled only after the retried one settled: no fourth call hides.
    later = envelope(f"{kit.prefix}.builder.build.failed")
    await bus.publish([later])
    assert (await recorder.next()).id == later.id

    assert [e.id for e in recorder.calls] == [event.id, event.id, event.id, later.id]
    assert await bus.dead_letters(queue) == []


@pytest.mark.parametrize("max_deliveries", [1, 3])
async def test_envelope_is_dead_lettered_after_max_deliveries(
    kit: BusKit, max_deliveries: int
) -> None:
    bus = await kit.bus()
    queue = kit.queue()
    calls: list[Envelope] = []

    async def handler(envelope: Envelope) -> None:
        await always_fails(calls, envelope)

    await bus.subscribe(queue, [f"{kit.prefix}.#"], handler, max_deliveries=max_deliveries)
    event = envelope(f"{kit.prefix}.registry.build.requested")
    await bus.publish([event])

    (body,) = await dead_letters(bus, queue, 1)

    # Once dead-lettered the envelope is off the queue, so this count is final.
    assert len(calls) == max_deliveries
    assert {e.id for e in calls} == {event.id}
    assert Envelope.model_validate_json(body) == event
    # Reading the dead letters does not consume them.
    assert [letter.body for letter in await bus.dead_letters(queue)] == [body]


async def test_poison_message_is_dead_lettered_without_calling_the_handler(kit: BusKit) -> None:
    bus = await kit.bus()
    queue = kit.queue()
    recorder = Recorder()
    await bus.subscribe(queue, [f"{kit.prefix}.#"], recorder)
    poison = [b"not json at all", json.dumps({"type": "x", "data": {}}).encode()]
    for body in poison:
        await kit.publish_raw(bus, f"{kit.prefix}.registry.build.requested", body)
    valid = envelope(f"{kit.prefix}.registry.build.requested")
    await bus.publish([valid])

    assert (await recorder.next()).id == valid.id
    assert await dead_letters(bus, queue, 2) == poison
    assert [e.id for e in recorder.calls] == [valid.id]
    letters = await bus.dead_letters(queue)
    assert [(letter.reason, letter.deliveries) for letter in letters] == [(POISON, 0)] * 2
    # Each can be named for a replay, though none carries an envelope id.
    assert len({letter.id for letter in letters}) == 2


# ----------------------------------------------------------------------------- operators


async def test_dead_letters_say_why_and_how_often_and_are_bounded(kit: BusKit) -> None:
    bus = await kit.bus()
    queue = kit.queue()
    calls: list[Envelope] = []

    async def handler(envelope: Envelope) -> None:
        await always_fails(calls, envelope)

    await bus.subscribe(queue, [f"{kit.prefix}.#"], handler, max_deliveries=2)
    sent = [envelope(f"{kit.prefix}.registry.build.requested", n) for n in range(3)]
    await bus.publish(sent)

    letters = await dead_letter_records(bus, queue, 3)

    # RabbitMQ runs handlers concurrently (prefetch): they may die in any order.
    assert sorted(letter.id for letter in letters) == sorted(str(e.id) for e in sent)
    assert {(letter.reason, letter.deliveries) for letter in letters} == {(DELIVERY_LIMIT, 2)}
    assert letters[0].type == f"{kit.prefix}.registry.build.requested"
    bounded = await bus.dead_letters(queue, limit=2)
    assert [letter.id for letter in bounded] == [letter.id for letter in letters[:2]]
    assert (await bus.dead_letter_counts())[queue] == 3


async def test_replay_sends_dead_letters_to_their_queue_only(kit: BusKit) -> None:
    bus = await kit.bus()
    broken, other = kit.queue(), kit.queue()
    pattern = f"{kit.prefix}.builder.#"
    fixed = asyncio.Event()
    calls: list[Envelope] = []
    processed = Recorder()

    async def fails_until_fixed(envelope: Envelope) -> None:
        if not fixed.is_set():
            await always_fails(calls, envelope)
        await processed(envelope)

    others = Recorder()
    await bus.subscribe(broken, [pattern], fails_until_fixed, max_deliveries=1)
    await bus.subscribe(other, [pattern], others)
    first, second = (envelope(f"{kit.prefix}.builder.build.failed", n) for n in range(2))
    await bus.publish([first, second])
    assert [e.id for e in await others.take(2)] == [first.id, second.id]
    await dead_letter_records(bus, broken, 2)

    fixed.set()
    assert await bus.replay_dead_letters(broken, ids=[str(second.id)]) == 1
    assert (await processed.next()).id == second.id
    assert [letter.id for letter in await bus.dead_letters(broken)] == [str(first.id)]

    assert await bus.replay_dead_letters(broken) == 1
    assert (await processed.next()).id == first.id
    assert await bus.dead_letters(broken) == []
    # The other consumer had them already and did not get them again.
    await bus.publish([last := envelope(f"{kit.prefix}.builder.build.failed", 9)])
    assert (await others.next()).id == last.id
    assert [e.id for e in others.calls] == [first.id, second.id, last.id]


async def test_purge_drops_the_dead_letters_of_one_queue(kit: BusKit) -> None:
    bus = await kit.bus()
    queue = kit.queue()
    await bus.subscribe(queue, [f"{kit.prefix}.#"], Recorder())
    await kit.publish_raw(bus, f"{kit.prefix}.registry.build.requested", b"poison")
    await dead_letter_records(bus, queue, 1)

    assert await bus.purge_dead_letters(queue) == 1
    assert await bus.dead_letters(queue) == []
    assert await bus.purge_dead_letters(queue) == 0


# ----------------------------------------------------------------------------- restarts


async def test_envelope_not_acknowledged_before_close_is_delivered_again(kit: BusKit) -> None:
    first = await kit.bus()
    queue = kit.queue()
    pattern = f"{kit.prefix}.#"
    started = asyncio.Event()

    async def blocks(envelope: Envelope) -> None:
        started.set()
        await asyncio.Event().wait()

    await first.subscribe(queue, [pattern], blocks)
    event = envelope(f"{kit.prefix}.registry.publish.requested")
    await first.publish([event])
    await asyncio.wait_for(started.wait(), TIMEOUT_S)
    await asyncio.wait_for(first.close(), TIMEOUT_S)

    second = await kit.bus()
    recorder = Recorder()
    await second.subscribe(queue, [pattern], recorder)

    assert (await recorder.next()).id == event.id


async def test_events_published_while_no_consumer_runs_wait_for_it(kit: BusKit) -> None:
    queue = kit.queue()
    pattern = f"{kit.prefix}.builder.#"
    declaring = await kit.bus()
    await declaring.subscribe(queue, [pattern], Recorder())
    await declaring.close()

    publishing = await kit.bus()
    sent = [envelope(f"{kit.prefix}.builder.deployment.ready", n) for n in range(3)]
    await publishing.publish(sent)
    await publishing.close()

    restarted = await kit.bus()
    recorder = Recorder()
    await restarted.subscribe(queue, [pattern], recorder)

    assert [e.id for e in await recorder.take(3)] == [e.id for e in sent]


async def test_local_bus_redelivers_what_a_crash_left_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    bus = LocalBus(path)
    await bus.subscribe("registry", ["builder.#"], Recorder())
    await bus.close()
    event = envelope("builder.deployment.ready")
    bus = LocalBus(path)
    await bus.publish([event])
    await bus.close()
    # What a process killed during its handler leaves behind.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE bus_message SET state = 'inflight', deliveries = 1")
    db.close()

    bus = LocalBus(path)
    recorder = Recorder()
    try:
        await bus.subscribe("registry", ["builder.#"], recorder, max_deliveries=2)
        assert (await recorder.next()).id == event.id
    finally:
        await bus.close()


# ----------------------------------------------------------------------------- RabbitMQ only


@pytest.mark.rabbitmq
async def test_publish_raises_bus_unavailable_promptly_when_the_broker_is_unreachable() -> None:
    bus = RabbitBus("amqp://guest:guest@127.0.0.1:1/", connect_timeout_s=2)
    started = time.monotonic()
    try:
        with pytest.raises(BusUnavailable):
            await asyncio.wait_for(bus.publish([envelope("registry.build.requested")]), 5)
        with pytest.raises(BusUnavailable):
            await asyncio.wait_for(bus.start(), 5)
        with pytest.raises(BusUnavailable):
            await bus.ready()
    finally:
        await bus.close()
    assert time.monotonic() - started < 5


@pytest.mark.rabbitmq
async def test_rabbit_bus_recovers_when_the_broker_drops_the_connection(tmp_path: Path) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl on the broker's host")
    kit = BusKit("rabbitmq", tmp_path)
    try:
        bus = await kit.bus(reconnect_interval_s=0.3)
        recorder = Recorder()
        await bus.subscribe(kit.queue(), [f"{kit.prefix}.#"], recorder)
        await bus.publish([before := envelope(f"{kit.prefix}.registry.build.requested")])
        assert (await recorder.next()).id == before.id

        _close_broker_connection(f"test-{kit.prefix}")
        after = envelope(f"{kit.prefix}.registry.build.requested")

        async def published() -> bool:
            attempt = time.monotonic()
            try:
                await bus.publish([after])
            except BusUnavailable:
                # Refused at once while reconnecting: the outbox relay retries later.
                assert time.monotonic() - attempt < 2
                return False
            return True

        await eventually(published)
        await bus.ready()
        # The consumer was restored on the new connection.
        assert (await recorder.next()).id == after.id
    finally:
        await kit.cleanup()


@pytest.mark.rabbitmq
async def test_rabbit_bus_declares_the_consumer_queues_again_after_reconnecting(
    tmp_path: Path,
) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl on the broker's host")
    kit = BusKit("rabbitmq", tmp_path)
    queue = kit.queue()
    pattern = f"{kit.prefix}.builder.#"
    try:
        bus = await kit.bus(reconnect_interval_s=0.3, queues={queue: (pattern,)})
        # A broker that came back without its storage: the queue is gone.
        connection = await aio_pika.connect(RABBITMQ)
        async with connection:
            await (await connection.channel()).queue_delete(queue)
        _close_broker_connection(f"test-{kit.prefix}")

        async def declared_again() -> bool:
            connection = await aio_pika.connect(RABBITMQ)
            async with connection:
                try:
                    await (await connection.channel()).declare_queue(queue, passive=True)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    return False
            return True

        await eventually(declared_again)
        await bus.ready()
        sent = envelope(f"{kit.prefix}.builder.deployment.ready")
        await bus.publish([sent])
        recorder = Recorder()
        await bus.subscribe(queue, [pattern], recorder)
        assert (await recorder.next()).id == sent.id
    finally:
        await kit.cleanup()


def _close_broker_connection(name: str) -> None:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
    )
    pids = [
        line.split("\t", 1)[0]
        for line in listed.stdout.splitlines()
        if f'{{"connection_name","{name}"}}' in line
    ]
    assert len(pids) == 1, listed.stdout
    subprocess.run(
        ["rabbitmqctl", "-q", "close_connection", pids[0], "test: broker drops connection"],
        check=True,
        capture_output=True,
    )


async def test_local_bus_opens_a_file_from_before_dead_letters_had_a_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE bus_queue (name TEXT PRIMARY KEY, patterns TEXT NOT NULL,
                max_deliveries INTEGER NOT NULL);
            CREATE TABLE bus_message (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
                envelope_id TEXT, body BLOB NOT NULL, deliveries INTEGER NOT NULL DEFAULT 0,
                state TEXT NOT NULL DEFAULT 'ready', available_at REAL NOT NULL DEFAULT 0);
            INSERT INTO bus_queue VALUES ('builder', '["registry.#"]', 5);
            INSERT INTO bus_message (queue, envelope_id, body, deliveries, state)
                VALUES ('builder', 'e1', x'7b7d', 5, 'dead');
            """
        )
    db.close()
    bus = LocalBus(path)
    try:
        (letter,) = await bus.dead_letters("builder")
        assert (letter.id, letter.reason, letter.deliveries) == ("e1", DELIVERY_LIMIT, 5)
    finally:
        await bus.close()
