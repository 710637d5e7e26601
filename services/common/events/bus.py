"""The event bus contract, shared by the RabbitMQ bus and the local (embedded) bus.

Semantics both implementations keep:

* ``start`` declares every consuming queue of :data:`modelcloud_proto.events.CONSUMER_QUEUES`
  (durable, bound to its patterns, with its dead-letter queue) before anything is published,
  so an event published before its consumer first subscribed waits in the queue instead of
  being dropped by an exchange with nothing bound to it.
* ``publish`` returns only once every envelope is safely stored by the bus (RabbitMQ:
  publisher confirms on persistent messages); it raises :class:`BusUnavailable` when the bus
  is down (nothing is wrong with the envelopes: try again later) and
  :class:`EnvelopeRejected` when the bus refuses some envelopes for what they are (sending
  them again will fail again).
* a queue is durable and named by its consumer (e.g. ``registry``); it receives every event
  whose type matches one of its topic patterns (``*`` one word, ``#`` zero or more words).
* delivery is at least once: an envelope is acknowledged only after the handler returned.
  A handler that raises gets the envelope again, up to ``max_deliveries`` times in all; then
  the envelope goes to the queue's dead-letter queue ``<queue>.dlq``.
* a message that is not a valid envelope (a poison message) goes to the dead-letter queue at
  once, without calling the handler.
* dead letters stay until an operator replays them (to their queue only: other consumers do
  not see them again) or purges them (``modelcloud events dlq``).
"""

import hashlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from modelcloud_proto.events import Envelope

Handler = Callable[[Envelope], Awaitable[None]]

EXCHANGE = "modelcloud.events"
DEAD_LETTER_EXCHANGE = "modelcloud.events.dlx"

# Why a message is in a dead-letter queue.
POISON = "poison"  # not a valid envelope: the handler never saw it
DELIVERY_LIMIT = "delivery_limit"  # the handler failed max_deliveries times


class BusUnavailable(Exception):
    """The bus could not take the envelopes now; nothing was lost, try again."""


class EnvelopeRejected(Exception):
    """The bus is up but refuses these envelopes (by id, with the reason) for what they are;
    the batch's other envelopes may or may not have been stored: publish them again."""

    def __init__(self, reasons: Mapping[UUID, str]) -> None:
        super().__init__("; ".join(f"{envelope_id}: {why}" for envelope_id, why in reasons.items()))
        self.reasons = dict(reasons)


@dataclass(frozen=True)
class DeadLetter:
    """A message waiting in a dead-letter queue.

    ``id`` names it for a replay: the envelope's id (on RabbitMQ, the message id its
    publisher set), or ``sha256:<16 hex>`` of the body for a message that carries none;
    ``deliveries`` is how many times the handler was called (a poison message: never).
    """

    id: str
    body: bytes
    reason: str
    deliveries: int

    @property
    def type(self) -> str | None:
        """The envelope's type, when the body is a valid envelope."""
        try:
            return Envelope.model_validate_json(self.body).type
        except ValueError:
            return None


def dead_letter_id(envelope_id: str | None, body: bytes) -> str:
    """The id operators name a dead letter by (see :class:`DeadLetter`)."""
    return envelope_id or f"sha256:{hashlib.sha256(body).hexdigest()[:16]}"


class EventBus(Protocol):
    async def start(self) -> None:
        """Connect, declare the exchange and every consuming queue; safe to call more than
        once. Raises :class:`BusUnavailable` when the bus cannot be reached."""

    async def ready(self) -> None:
        """Return if the bus is connected now, else raise :class:`BusUnavailable` (for
        ``/readyz``: a bus that comes back is used again without a restart)."""

    async def close(self) -> None:
        """Stop consuming and disconnect; unacknowledged envelopes will be redelivered."""

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Store every envelope durably, or raise :class:`BusUnavailable` or
        :class:`EnvelopeRejected`."""

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, max_deliveries: int = 5
    ) -> None:
        """Declare ``queue`` bound to ``patterns`` and start delivering to ``handler``."""

    async def unsubscribe(self, queue: str) -> None:
        """Stop delivering ``queue`` here (its service stops while the bus goes on); what
        was not acknowledged is delivered again to the next consumer."""

    async def dead_letter_counts(self) -> dict[str, int]:
        """Every queue this bus knows (RabbitMQ: the declared consumer queues and those
        subscribed here) and how many messages wait in its dead-letter queue."""

    async def dead_letters(self, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
        """The messages waiting in ``<queue>.dlq``, oldest first, at most ``limit``; reading
        them does not remove them."""

    async def replay_dead_letters(self, queue: str, *, ids: Collection[str] | None = None) -> int:
        """Deliver the dead letters of ``queue`` (those named by ``ids``, or all) to ``queue``
        again, and to no other queue, with a fresh delivery count; returns how many."""

    async def purge_dead_letters(self, queue: str) -> int:
        """Drop every dead letter of ``queue``; returns how many."""


def topic_matches(pattern: str, event_type: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more words."""
    return _match(pattern.split("."), event_type.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])
