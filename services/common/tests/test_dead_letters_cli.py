"""`modelcloud events dlq list|show|replay|purge`, against the local bus of a data folder
(as `modelcloud up` leaves it) and against RabbitMQ."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest
import typer
from typer.testing import CliRunner

from modelcloud_proto.events import Envelope
from services.cli import register
from services.common.events.bus import EventBus, Handler
from services.common.events.local import LocalBus
from services.common.events.rabbitmq import RabbitBus

RABBITMQ = os.environ.get("MODELCLOUD_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")


def cli(*args: str, input_: str | None = None) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["events", "dlq", *args], input=input_)
    return result.exit_code, result.output


def envelope(event_type: str, n: int) -> Envelope:
    return Envelope(
        type=event_type, version=1, occurred_at=datetime.now(UTC), producer="test", data={"n": n}
    )


async def dead_letter(bus: EventBus, queue: str, pattern: str, events: list[Envelope]) -> None:
    """Subscribe a handler that always fails and wait for ``events`` to be dead-lettered."""

    async def fails(envelope: Envelope) -> None:
        raise RuntimeError("fails on purpose")

    await bus.subscribe(queue, [pattern], fails, max_deliveries=1)
    await bus.publish(events)
    async with asyncio.timeout(10):
        while len(await bus.dead_letters(queue)) < len(events):
            await asyncio.sleep(0.05)
    await bus.unsubscribe(queue)


async def test_operator_lists_shows_replays_and_purges_local_dead_letters(
    tmp_path: Path,
) -> None:
    bus = LocalBus(tmp_path / "events.db", poll_interval_s=0.1)
    await bus.start()
    sent = [envelope("registry.build.requested", n) for n in range(3)]
    try:
        await dead_letter(bus, "builder", "registry.build.requested", sent)
    finally:
        await bus.close()
    folder = ["--data-dir", str(tmp_path)]

    code, output = await asyncio.to_thread(cli, "list", *folder)
    assert code == 0, output
    assert {tuple(line.split()) for line in output.splitlines()[1:]} >= {
        ("builder", "3"),
        ("gateway", "0"),
        ("registry", "0"),
    }

    code, output = await asyncio.to_thread(cli, "show", "builder", "--limit", "2", *folder)
    assert code == 0, output
    assert output.splitlines() == [
        f"{e.id}  registry.build.requested  delivery_limit  deliveries=1" for e in sent[:2]
    ]

    code, output = await asyncio.to_thread(
        cli, "replay", "builder", "--id", str(sent[1].id), *folder
    )
    assert (code, output) == (0, "replayed 1 dead letters to builder\n")
    bus = LocalBus(tmp_path / "events.db", poll_interval_s=0.1)
    received: asyncio.Queue[Envelope] = asyncio.Queue()
    try:
        await bus.subscribe("builder", ["registry.build.requested"], _into(received))
        assert (await asyncio.wait_for(received.get(), 10)).id == sent[1].id
        await bus.unsubscribe("builder")
    finally:
        await bus.close()

    code, output = await asyncio.to_thread(cli, "purge", "builder", "--yes", *folder)
    assert (code, output) == (0, "purged 2 dead letters of builder\n")
    code, output = await asyncio.to_thread(cli, "show", "builder", *folder)
    assert (code, output) == (0, "")


def _into(queue: asyncio.Queue[Envelope]) -> Handler:
    async def handle(envelope: Envelope) -> None:
        queue.put_nowait(envelope)

    return handle


def test_an_unknown_queue_or_a_missing_bus_is_a_usage_error(tmp_path: Path) -> None:
    code, output = cli("list", "--data-dir", str(tmp_path))
    assert code == 2
    assert "no local bus at" in output
    asyncio.run(_make_bus(tmp_path))
    code, output = cli("show", "nope", "--data-dir", str(tmp_path))
    assert code == 2
    assert "no queue 'nope'" in output
    code, output = cli("purge", "builder", "--data-dir", str(tmp_path), input_="n\n")
    assert code == 1


async def _make_bus(folder: Path) -> None:
    bus = LocalBus(folder / "events.db")
    await bus.start()
    await bus.close()


@pytest.fixture
async def rabbit_queue() -> AsyncIterator[str]:
    name = f"test-cli-{uuid.uuid4().hex[:10]}"
    yield name
    connection = await aio_pika.connect(RABBITMQ)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.queue_delete(f"{name}.dlq")


@pytest.mark.rabbitmq
async def test_operator_replays_and_purges_rabbitmq_dead_letters(rabbit_queue: str) -> None:
    pattern = f"{rabbit_queue}.#"
    bus = RabbitBus(RABBITMQ, queues={})
    await bus.start()
    sent = [envelope(f"{rabbit_queue}.build.requested", n) for n in range(2)]
    try:
        await dead_letter(bus, rabbit_queue, pattern, sent)
        broker = ["--broker-url", RABBITMQ]

        code, output = await asyncio.to_thread(cli, "show", rabbit_queue, *broker)
        assert code == 0, output
        # Handlers run concurrently on RabbitMQ: dead-lettered in any order.
        assert sorted(line.split()[0] for line in output.splitlines()) == sorted(
            str(e.id) for e in sent
        )

        code, output = await asyncio.to_thread(
            cli, "replay", rabbit_queue, "--id", str(sent[0].id), *broker
        )
        assert (code, output) == (0, f"replayed 1 dead letters to {rabbit_queue}\n")
        received: asyncio.Queue[Envelope] = asyncio.Queue()
        await bus.subscribe(rabbit_queue, [pattern], _into(received))
        assert (await asyncio.wait_for(received.get(), 10)).id == sent[0].id

        code, output = await asyncio.to_thread(cli, "purge", rabbit_queue, "--yes", *broker)
        assert (code, output) == (0, f"purged 1 dead letters of {rabbit_queue}\n")
        assert await bus.dead_letters(rabbit_queue) == []
    finally:
        await bus.close()


@pytest.mark.rabbitmq
async def test_a_replay_to_a_queue_that_is_gone_keeps_the_dead_letters(rabbit_queue: str) -> None:
    bus = RabbitBus(RABBITMQ, queues={})
    await bus.start()
    sent = [envelope(f"{rabbit_queue}.build.requested", 0)]
    try:
        await dead_letter(bus, rabbit_queue, f"{rabbit_queue}.#", sent)
        await bus.unsubscribe(rabbit_queue)
        connection = await aio_pika.connect(RABBITMQ)
        async with connection:
            await (await connection.channel()).queue_delete(rabbit_queue)

        code, output = await asyncio.to_thread(
            cli, "replay", rabbit_queue, "--broker-url", RABBITMQ
        )
        assert code != 0
        assert f"no queue '{rabbit_queue}'" in output
        assert [letter.id for letter in await bus.dead_letters(rabbit_queue)] == [str(sent[0].id)]
    finally:
        await bus.close()


def test_what_a_publisher_sent_reaches_the_terminal_escaped() -> None:
    from services.cli import _printable

    shown = _printable("id  \x1b]0;owned\x07\x1b[2J{}\nline two\té")
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert shown == "id  \\x1b]0;owned\\x07\\x1b[2J{}\nline two\té"
