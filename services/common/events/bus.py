"""The event bus contract, shared by the RabbitMQ bus and the local (embedded) bus.

Semantics both implementations keep:

* ``publish`` returns only once every envelope is safely stored by the bus (RabbitMQ:
  publisher confirms on persistent messages); it raises :class:`BusUnavailable` otherwise,
  and the caller (the outbox relay) tries again later.
* a queue is durable and named by its consumer (e.g. ``registry``); it receives every event
  whose type matches one of its topic patterns (``*`` one word, ``#`` zero or more words).
* delivery is at least once: an envelope is acknowledged only after the handler returned.
  A handler that raises gets the envelope again, up to ``max_deliveries`` times in all; then
  the envelope goes to the queue's dead-letter queue ``<queue>.dlq``.
* a message that is not a valid envelope (a poison message) goes to the dead-letter queue at
  once, without calling the handler.
"""

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from modelcloud_proto.events import Envelope

Handler = Callable[[Envelope], Awaitable[None]]

EXCHANGE = "modelcloud.events"
DEAD_LETTER_EXCHANGE = "modelcloud.events.dlx"


class BusUnavailable(Exception):
    """The bus could not take the envelopes now; nothing was lost, try again."""


class EventBus(Protocol):
    async def start(self) -> None:
        """Connect and declare the exchange; safe to call more than once."""

    async def close(self) -> None:
        """Stop consuming and disconnect; unacknowledged envelopes will be redelivered."""

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Store every envelope durably, or raise :class:`BusUnavailable`."""

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, max_deliveries: int = 5
    ) -> None:
        """Declare ``queue`` bound to ``patterns`` and start delivering to ``handler``."""

    async def unsubscribe(self, queue: str) -> None:
        """Stop delivering ``queue`` here (its service stops while the bus goes on); what
        was not acknowledged is delivered again to the next consumer."""

    async def dead_letters(self, queue: str) -> list[bytes]:
        """The raw bodies waiting in ``<queue>.dlq`` (for operators and tests), oldest first."""


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
