"""The transactional outbox: a state change and its event commit together; a relay
publishes committed events to the bus, in order, and marks them sent.

A crash or a broker outage between commit and publish loses nothing: the row stays
unpublished and the relay sends it on its next pass (so consumers may see an event twice;
they are idempotent, see :mod:`services.common.events.consumer`).
"""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import JSON, Column, DateTime, Integer
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import Envelope, Event
from services.common.database import SessionFactory
from services.common.events.bus import BusUnavailable, EventBus

log = logging.getLogger(__name__)


class OutboxEvent(SQLModel, table=True):
    """An event waiting to be (or already) published. ``position`` orders publication."""

    __tablename__ = "outbox_event"

    position: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    event_id: UUID = Field(unique=True)
    type: str = Field(max_length=200)
    envelope: dict[str, object] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    published_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True, index=True)
    )
    attempts: int = 0


def add_event(
    session: AsyncSession,
    event: Event,
    *,
    producer: str,
    correlation_id: str | None = None,
) -> Envelope:
    """Stage ``event`` in the caller's transaction; it is published only if that commits."""
    envelope = Envelope.of(event, producer=producer, correlation_id=correlation_id)
    session.add(
        OutboxEvent(
            event_id=envelope.id,
            type=envelope.type,
            envelope=envelope.model_dump(mode="json"),
            created_at=envelope.occurred_at,
        )
    )
    return envelope


class OutboxRelay:
    """Publishes committed outbox rows; one pass per wake-up or ``poll_interval_s``."""

    def __init__(
        self,
        sessions: SessionFactory,
        bus: EventBus,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Publish soon: call after committing a transaction that added events."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish every committed, unpublished event; returns how many were sent.

        Raises :class:`BusUnavailable` (after recording the attempt) when the bus refuses.
        """
        sent = 0
        while True:
            async with self._sessions() as session, session.begin():
                query = (
                    select(OutboxEvent)
                    .where(col(OutboxEvent.published_at).is_(None))
                    .order_by(col(OutboxEvent.position))
                    .limit(self._batch_size)
                )
                if session.bind is not None and session.bind.dialect.name == "postgresql":
                    # Several relays (replicas of a service) never send the same rows at once.
                    query = query.with_for_update(skip_locked=True)
                rows = list((await session.exec(query)).all())
                if not rows:
                    return sent
                envelopes = [Envelope.model_validate(row.envelope) for row in rows]
                try:
                    await self._bus.publish(envelopes)
                except BusUnavailable:
                    for row in rows:
                        row.attempts += 1
                    raise
                now = datetime.now(UTC)
                for row in rows:
                    row.published_at = now
                    row.attempts += 1
                sent += len(rows)

    async def run(self) -> None:
        """Relay until cancelled, backing off while the bus is unavailable."""
        backoff = self._poll_interval_s
        while True:
            try:
                sent = await self.publish_pending()
                if sent:
                    log.debug("outbox relay published %d events", sent)
                backoff = self._poll_interval_s
            except BusUnavailable as exc:
                log.warning("event bus unavailable, retrying in %.1fs: %s", backoff, exc)
                backoff = min(backoff * 2, self._max_backoff_s)
            except Exception:
                log.exception("outbox relay pass failed")
                backoff = min(backoff * 2, self._max_backoff_s)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
