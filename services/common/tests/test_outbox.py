"""The outbox relay: attempts are recorded, a row that fails for itself is parked without
holding back the rows after it, and a bus outage parks nothing."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from uuid import UUID

import pytest
from prometheus_client import CollectorRegistry
from sqlmodel import col, select

from modelcloud_proto.events import Envelope, VersionOffline
from services.common.database import SessionFactory, create_engine, session_factory
from services.common.events.bus import BusUnavailable, EnvelopeRejected
from services.common.events.local import LocalBus
from services.common.events.outbox import OutboxEvent, OutboxRelay, add_event

VERSION = UUID(int=1)


class FakeBus:
    """Records what it stores; down while ``down`` is set; refuses ``poison`` envelopes by
    name (not an outage); fails with an error that names nothing while ``broken`` is set."""

    def __init__(self) -> None:
        self.stored: list[Envelope] = []
        self.down = False
        self.poison: set[UUID] = set()
        self.broken = False
        self.calls = 0

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        self.calls += 1
        if self.down:
            raise BusUnavailable("broker unreachable (test)")
        why = "the broker refused the frame (test)"
        refused = {e.id: why for e in envelopes if e.id in self.poison}
        if refused:
            raise EnvelopeRejected(refused)
        if self.broken:
            raise RuntimeError("an error that names no envelope (test)")
        self.stored.extend(envelopes)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(OutboxEvent.metadata.create_all, tables=[OutboxEvent.__table__])  # type: ignore[attr-defined]
    yield session_factory(engine)
    await engine.dispose()


async def stage(sessions: SessionFactory, count: int) -> list[UUID]:
    """Commit ``count`` events, one transaction each (as services do); their ids in order."""
    ids = []
    for n in range(count):
        async with sessions() as session:
            envelope = add_event(
                session,
                VersionOffline(
                    project="p", service="s", version_id=VERSION, version=f"{n}", api_version=1
                ),
                producer="test",
            )
            await session.commit()
        ids.append(envelope.id)
    return ids


async def rows(sessions: SessionFactory) -> list[OutboxEvent]:
    async with sessions() as session:
        query = select(OutboxEvent).order_by(col(OutboxEvent.position))
        return list((await session.exec(query)).all())


async def test_attempts_are_recorded_while_the_bus_is_down(sessions: SessionFactory) -> None:
    bus = FakeBus()
    bus.down = True
    relay = OutboxRelay(sessions, bus)  # type: ignore[arg-type]
    await stage(sessions, 2)

    for _ in range(3):
        with pytest.raises(BusUnavailable):
            await relay.publish_pending()

    stored = await rows(sessions)
    assert [row.attempts for row in stored] == [3, 3]
    assert all("broker unreachable" in (row.last_error or "") for row in stored)
    # An outage is not the rows' fault: none is parked, and all go once the bus is back.
    assert [row.parked_at for row in stored] == [None, None]
    bus.down = False
    assert await relay.publish_pending() == 2


async def test_a_row_the_bus_refuses_does_not_hold_back_later_rows(
    sessions: SessionFactory,
) -> None:
    bus = FakeBus()
    metrics = CollectorRegistry()
    relay = OutboxRelay(sessions, bus, max_failures=3, metrics=metrics)  # type: ignore[arg-type]
    first, refused, *later = await stage(sessions, 4)
    bus.poison.add(refused)

    assert await relay.publish_pending() == 3
    # The healthy rows went on, in their order.
    assert [e.id for e in bus.stored] == [first, *later]
    for _ in range(2):
        assert await relay.publish_pending() == 0

    row = next(row for row in await rows(sessions) if row.event_id == refused)
    assert (row.attempts, row.failures) == (3, 3)
    assert row.parked_at is not None
    assert "refused the frame" in (row.last_error or "")
    assert metrics.get_sample_value("modelcloud_outbox_parked_events") == 1
    assert metrics.get_sample_value("modelcloud_outbox_failures_total") == 3
    # Parked: no further attempts, and later events still go.
    calls = bus.calls
    (newer,) = await stage(sessions, 1)
    assert await relay.publish_pending() == 1
    assert bus.calls == calls + 1
    assert bus.stored[-1].id == newer


async def test_a_row_whose_envelope_no_longer_validates_is_parked_at_once(
    sessions: SessionFactory,
) -> None:
    bus = FakeBus()
    relay = OutboxRelay(sessions, bus)  # type: ignore[arg-type]
    before, broken, after = await stage(sessions, 3)
    async with sessions() as session, session.begin():
        # What an older release, or a hand edit, could have left in the table.
        query = select(OutboxEvent).where(col(OutboxEvent.event_id) == broken)
        (await session.exec(query)).one().envelope = {"type": 1}

    assert await relay.publish_pending() == 2

    assert [e.id for e in bus.stored] == [before, after]
    row = next(row for row in await rows(sessions) if row.event_id == broken)
    assert row.parked_at is not None
    assert "invalid envelope" in (row.last_error or "")
    assert relay.parked == 1


async def test_an_event_too_large_for_the_local_bus_is_parked_and_the_rest_arrive(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    bus = LocalBus(
        tmp_path / "events.db", queues={"gateway": ("registry.#",)}, max_message_bytes=600
    )
    relay = OutboxRelay(sessions, bus, max_failures=1)
    received: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(envelope: Envelope) -> None:
        received.put_nowait(envelope)

    try:
        await bus.start()
        first, large, last = await stage(sessions, 3)
        async with sessions() as session, session.begin():
            query = select(OutboxEvent).where(col(OutboxEvent.event_id) == large)
            row = (await session.exec(query)).one()
            row.envelope = {**row.envelope, "data": {**row.envelope["data"], "version": "x" * 1000}}  # type: ignore[dict-item]

        assert await relay.publish_pending() == 2
        await bus.subscribe("gateway", ["registry.#"], handler)
        got = [await asyncio.wait_for(received.get(), 10) for _ in range(2)]

        assert [e.id for e in got] == [first, last]
        parked = next(row for row in await rows(sessions) if row.event_id == large)
        assert parked.parked_at is not None
        assert "over the bus's 600" in (parked.last_error or "")
    finally:
        await bus.close()


@pytest.mark.postgres
async def test_relays_on_postgresql_skip_the_rows_another_relay_holds() -> None:
    from modelcloud_testing.servers import fresh_postgres_database

    async with fresh_postgres_database() as url:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(
                    OutboxEvent.metadata.create_all,
                    tables=[OutboxEvent.__table__],  # type: ignore[attr-defined]
                )
            sessions = session_factory(engine)
            bus = FakeBus()
            relay = OutboxRelay(sessions, bus)  # type: ignore[arg-type]
            first, held, last = await stage(sessions, 3)
            async with sessions() as other, other.begin():
                # Another replica's relay is sending this row right now.
                query = select(OutboxEvent).where(col(OutboxEvent.event_id) == held)
                await other.exec(query.with_for_update())

                assert await relay.publish_pending() == 2
                assert [e.id for e in bus.stored] == [first, last]
            assert await relay.publish_pending() == 1
            assert bus.stored[-1].id == held
        finally:
            await engine.dispose()


async def test_an_error_that_names_no_row_parks_nothing_and_keeps_the_order(
    sessions: SessionFactory,
) -> None:
    """An error the bus did not pin on an envelope could be anything (a bug, a broker in a
    state it did not name): treated like an outage, so no row is parked for it and none is
    sent before an earlier one (a version's offline never overtakes its online)."""
    bus = FakeBus()
    relay = OutboxRelay(sessions, bus, max_failures=2)  # type: ignore[arg-type]
    staged = await stage(sessions, 3)
    bus.broken = True
    for _ in range(4):  # twice max_failures
        with pytest.raises(BusUnavailable):
            await relay.publish_pending()
    assert bus.stored == []
    assert all(row.parked_at is None and row.failures == 0 for row in await rows(sessions))
    assert all(row.attempts == 4 for row in await rows(sessions))

    bus.broken = False
    assert await relay.publish_pending() == 3
    assert [e.id for e in bus.stored] == staged
