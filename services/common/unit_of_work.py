"""One transaction of a service: the session, the events it stages, and the commit that
publishes both at once (the outbox relay is woken right after)."""

from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import Event
from services.common.events.outbox import OutboxRelay, add_event


@dataclass
class UnitOfWork:
    session: AsyncSession
    producer: str
    relay: OutboxRelay | None = None
    correlation_id: str | None = None

    def emit(self, event: Event) -> None:
        """Stage ``event``; it is published only if the transaction commits."""
        add_event(self.session, event, producer=self.producer, correlation_id=self.correlation_id)

    async def commit(self) -> None:
        await self.session.commit()
        if self.relay is not None:
            self.relay.notify()
