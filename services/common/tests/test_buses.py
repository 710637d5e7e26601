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
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from modelcloud_proto.events import Envelope
from services.common.events.bus import EXCHANGE, BusUnavailable, EventBus
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

    async def bus(self, *, reconnect_interval_s: float = 2.0) -> EventBus:
        bus: EventBus
        if self.kind == "local":
            bus = LocalBus(self._db, poll_interval_s=0.1)
        else:
            bus = RabbitBus(
                RABBITMQ, name=f"test-{self.prefix}", reconnect_interval_s=reconnect_interval_s
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
    assert await bus.dead_letters(queue) == [body]


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
    finally:
        await bus.close()
    assert time.monotonic() - started < 3


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
        # The consumer was restored on the new connection.
        assert (await recorder.next()).id == after.id
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
