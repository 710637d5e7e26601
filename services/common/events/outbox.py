"""The transactional outbox: a state change and its event commit together; a relay
publishes committed events to the bus, in order, and marks them sent.

A crash or a broker outage between commit and publish loses nothing: the row stays
unpublished and the relay sends it on its next pass (so consumers may see an event twice;
they are idempotent, see :mod:`services.common.events.consumer`).

Every attempt is recorded on its row (``attempts``, ``last_error``), in a transaction of its
own that commits whatever the outcome. A row that fails for what it is (an envelope that no
longer validates, or one the bus refuses) does not hold back the rows after it: they go on in
order, and the failing row is tried again on the next pass until it has failed
``max_failures`` times; then it is *parked* (``parked_at``): left out of every pass, logged
as an error and counted in ``modelcloud_outbox_parked_events``. An operator who fixed the
cause sends it again with ``UPDATE outbox_event SET parked_at = NULL, failures = 0``. While
the bus is down nothing counts as a failure, and nothing is parked: the relay backs off.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError
from sqlalchemy import JSON, Column, DateTime, Integer, Text, func
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import Envelope, Event
from services.common.database import SessionFactory
from services.common.events.bus import BusUnavailable, EnvelopeRejected, EventBus

log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 2000


class OutboxEvent(SQLModel, table=True):
    """An event waiting to be (or already) published. ``position`` orders publication;
    ``attempts`` counts every try, ``failures`` those that were the row's own fault."""

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
    failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    parked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


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


@dataclass
class _Pass:
    """What one batch came to; applied to its rows before the transaction commits."""

    sent: int = 0
    parked: int = 0
    unavailable: BusUnavailable | None = None


class OutboxRelay:
    """Publishes committed outbox rows; one pass per wake-up or ``poll_interval_s``.

    ``metrics``: where to register the parked-events gauge and the failures counter (a
    service passes its ``/metrics`` registry).
    """

    def __init__(
        self,
        sessions: SessionFactory,
        bus: EventBus,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 0.5,
        max_backoff_s: float = 10.0,
        max_failures: int = 5,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self._sessions = sessions
        self._bus = bus
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._max_backoff_s = max_backoff_s
        self._max_failures = max_failures
        self._wake = asyncio.Event()
        self._parked: int | None = None  # counted on the first pass
        self._failures = Counter(
            "modelcloud_outbox_failures",
            "Outbox rows that failed to publish for what they are (not a bus outage).",
            registry=metrics,
        )
        if metrics is not None:
            Gauge(
                "modelcloud_outbox_parked_events",
                "Outbox rows parked after failing max_failures times: published by no one "
                "until an operator clears their parked_at.",
                registry=metrics,
            ).set_function(lambda: self._parked or 0)

    @property
    def parked(self) -> int | None:
        """How many rows are parked (``None`` before the first pass counted them)."""
        return self._parked

    def notify(self) -> None:
        """Publish soon: call after committing a transaction that added events."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish every committed, unpublished, unparked event; returns how many were sent.

        Raises :class:`BusUnavailable` (after recording the attempt) when the bus is down.
        A row that fails for itself is recorded and tried again on the next call.
        """
        sent = parked = 0
        after = 0  # one try per row and pass: a failed row waits for the next pass
        while True:
            async with self._sessions() as session, session.begin():
                query = (
                    select(OutboxEvent)
                    .where(
                        col(OutboxEvent.published_at).is_(None),
                        col(OutboxEvent.parked_at).is_(None),
                        col(OutboxEvent.position) > after,
                    )
                    .order_by(col(OutboxEvent.position))
                    .limit(self._batch_size)
                )
                if session.bind is not None and session.bind.dialect.name == "postgresql":
                    # Several relays (replicas of a service) never send the same rows at once.
                    query = query.with_for_update(skip_locked=True)
                rows = list((await session.exec(query)).all())
                if rows:
                    after = rows[-1].position or after
                    outcome = await self._publish(rows)
                    sent, parked = sent + outcome.sent, parked + outcome.parked
                # Leaving the block commits what the attempt recorded, whatever its outcome.
            if self._parked is None or parked:
                await self._count_parked()
            if not rows:
                return sent
            if outcome.unavailable is not None:
                raise outcome.unavailable

    async def _publish(self, rows: Sequence[OutboxEvent]) -> _Pass:
        outcome = _Pass()
        valid: list[tuple[OutboxEvent, Envelope]] = []
        for row in rows:
            try:
                valid.append((row, Envelope.model_validate(row.envelope)))
            except ValidationError as exc:
                # The stored row never changes: no later try can succeed, park it now.
                self._fail(row, f"invalid envelope: {exc}", outcome, park=True)
        await self._send(valid, outcome)
        return outcome

    async def _send(self, pending: list[tuple[OutboxEvent, Envelope]], outcome: _Pass) -> None:
        """Publish ``pending`` in order; each row ends published, failed, or (the bus is
        down: ``outcome.unavailable``) with its attempt recorded."""
        while pending:
            try:
                await self._bus.publish([envelope for _, envelope in pending])
            except BusUnavailable as exc:
                for row, _ in pending:
                    row.attempts += 1
                    row.last_error = _error(exc)
                outcome.unavailable = exc
                return
            except EnvelopeRejected as exc:
                refused = [(row, e) for row, e in pending if e.id in exc.reasons]
                for row, envelope in refused:
                    self._fail(row, f"refused by the bus: {exc.reasons[envelope.id]}", outcome)
                if refused:
                    # The others may have been stored already: at worst, a duplicate.
                    pending = [(row, e) for row, e in pending if e.id not in exc.reasons]
                    continue
                error: Exception = exc
            except Exception as exc:
                # Nothing says the rows are at fault (a bug, a bus in a state it did not
                # name): handled like an outage, so nothing is parked or sent out of order.
                log.exception("outbox publish failed; retrying the rows in order later")
                for row, _ in pending:
                    row.attempts += 1
                    row.last_error = _error(exc)
                outcome.unavailable = BusUnavailable(f"{type(exc).__name__}: {exc}")
                return
            else:
                now = datetime.now(UTC)
                for row, _ in pending:
                    row.published_at = now
                    row.attempts += 1
                outcome.sent += len(pending)
                return
            if len(pending) == 1:
                log.warning("outbox event %s failed to publish", pending[0][1].id, exc_info=error)
                self._fail(pending[0][0], _error(error), outcome)
                return
            # The bus named no envelope: try each alone to find the one at fault.
            for item in pending:
                await self._send([item], outcome)
                if outcome.unavailable is not None:
                    return
            return

    def _fail(self, row: OutboxEvent, error: str, outcome: _Pass, *, park: bool = False) -> None:
        row.attempts += 1
        row.failures += 1
        row.last_error = error[:_MAX_ERROR_CHARS]
        self._failures.inc()
        if park or row.failures >= self._max_failures:
            row.parked_at = datetime.now(UTC)
            outcome.parked += 1
            log.error(
                "outbox event parked after %d failures, later events go on: "
                "event_id=%s type=%s error=%s",
                row.failures,
                row.event_id,
                row.type,
                row.last_error,
            )
        else:
            log.warning(
                "outbox event failed (%d/%d), later events go on: event_id=%s type=%s error=%s",
                row.failures,
                self._max_failures,
                row.event_id,
                row.type,
                row.last_error,
            )

    async def _count_parked(self) -> None:
        async with self._sessions() as session:
            query = select(func.count()).where(col(OutboxEvent.parked_at).is_not(None))
            self._parked = (await session.exec(query)).one()

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


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
