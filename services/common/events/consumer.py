"""Idempotent consumers: each event id takes effect once per consumer.

The handler's database changes and the "processed" marker commit in one transaction, so a
redelivered event (the bus delivers at least once) is recognised and acknowledged without
running the handler again, and a handler that fails leaves no marker and is retried.
"""

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Column, DateTime
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import Envelope, Event
from services.common.database import SessionFactory
from services.common.events.bus import Handler

log = logging.getLogger(__name__)

EventHandler = Callable[[AsyncSession, Event, Envelope], Awaitable[None]]


class ProcessedEvent(SQLModel, table=True):
    __tablename__ = "processed_event"

    consumer: str = Field(primary_key=True, max_length=100)
    event_id: UUID = Field(primary_key=True)
    processed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


def idempotent(consumer: str, sessions: SessionFactory, handler: EventHandler) -> Handler:
    """Wrap ``handler`` so each envelope id is applied once, atomically with its effects."""

    async def handle(envelope: Envelope) -> None:
        event = envelope.event()
        async with sessions() as session:
            try:
                async with session.begin():
                    session.add(
                        ProcessedEvent(
                            consumer=consumer,
                            event_id=envelope.id,
                            processed_at=datetime.now(UTC),
                        )
                    )
                    try:
                        await session.flush()
                    except IntegrityError as exc:
                        raise _AlreadyProcessed from exc
                    await handler(session, event, envelope)
            except _AlreadyProcessed:
                log.info("event %s (%s) already processed", envelope.id, envelope.type)

    return handle


class _AlreadyProcessed(Exception):
    """The marker exists: this consumer applied the event before."""
