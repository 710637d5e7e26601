"""The event bus on RabbitMQ: a durable topic exchange, quorum queues, dead-letter queues.

Publishing uses one channel with publisher confirms and persistent messages, so
:meth:`RabbitBus.publish` returns only once the broker has stored every envelope. Each
subscription gets its own channel (its prefetch, and a channel error there stops only that
consumer) and a quorum queue whose ``x-delivery-limit`` makes the broker dead-letter an
envelope after ``max_deliveries`` handler calls.

``start`` declares every consuming queue of ``CONSUMER_QUEUES`` (bound, with its dead-letter
queue) before anything is published: a topic exchange drops what no queue is bound to, so an
event published before its consumer's first start would otherwise be lost.

The connection is robust: when the broker restarts, aio-pika reconnects in the background and
re-declares the exchanges, queues, bindings and consumers (and this bus declares the consumer
queues again, for a broker that came back empty). While it is away, ``ready`` and ``publish``
raise :class:`BusUnavailable` at once (or after ``publish_timeout_s`` if the connection dies
mid-batch) instead of waiting for the broker, so the outbox relay backs off and retries.

Dead letters are read with ``basic.get`` without acknowledging and put back in place at the
end (quorum queues keep a returned message's position). RabbitMQ 4 quorum queues count such
returns against a default delivery limit of 20 and drop the message past it: there, give the
``.dlq`` queues a policy with ``delivery-limit`` -1.
"""

import asyncio
import logging
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    ConsumerTag,
)
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
)
from pamqp.common import FieldTable
from pydantic import ValidationError

from modelcloud_proto.events import CONSUMER_QUEUES, Envelope
from services.common.events.bus import (
    DEAD_LETTER_EXCHANGE,
    DELIVERY_LIMIT,
    EXCHANGE,
    POISON,
    BusUnavailable,
    DeadLetter,
    EnvelopeRejected,
    Handler,
    dead_letter_id,
)

log = logging.getLogger(__name__)

QUORUM: FieldTable = {"x-queue-type": "quorum"}


@dataclass(frozen=True)
class _Consumer:
    queue: AbstractQueue
    tag: ConsumerTag


class RabbitBus:
    """:class:`~services.common.events.bus.EventBus` on RabbitMQ (``url`` like ``amqp://…``).

    ``prefetch`` bounds how many envelopes one subscription handles at once: the handler may
    run concurrently for different envelopes of the same queue, so order of completion is
    not guaranteed (order of delivery is, as long as nothing is redelivered). ``name`` labels
    the connection in the broker's tools. ``queues`` are declared at start with
    ``max_deliveries`` (a queue's arguments are fixed once it exists); an envelope over
    ``max_message_bytes`` (RabbitMQ 4's default ``max_message_size``) is refused before sending.
    """

    def __init__(
        self,
        url: str,
        *,
        prefetch: int = 32,
        publish_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        reconnect_interval_s: float = 2.0,
        name: str = "modelcloud",
        queues: Mapping[str, Sequence[str]] = CONSUMER_QUEUES,
        max_deliveries: int = 5,
        max_message_bytes: int = 16 << 20,
    ) -> None:
        self._url = url
        self._queues = dict(queues)
        self._max_deliveries = max_deliveries
        self._max_message_bytes = max_message_bytes
        self._name = name
        self._prefetch = prefetch
        self._publish_timeout_s = publish_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_interval_s = reconnect_interval_s
        self._lock = asyncio.Lock()
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._consumers: list[_Consumer] = []

    async def start(self) -> None:
        """Connect, open the publishing channel, declare both exchanges and the consumer
        queues.

        Raises :class:`BusUnavailable` when the broker cannot be reached (or drops the
        connection meanwhile): the first connection fails fast; only later losses are
        retried in the background. Call again to retry.
        """
        async with self._lock:
            if self._connection is not None:
                return
            try:
                connection = await aio_pika.connect_robust(
                    self._url,
                    timeout=self._connect_timeout_s,
                    reconnect_interval=self._reconnect_interval_s,
                    client_properties={"connection_name": self._name},
                )
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                raise BusUnavailable(f"cannot connect to RabbitMQ: {exc!r}") from exc
            try:
                channel = await connection.channel(publisher_confirms=True)
                self._exchange = await channel.declare_exchange(
                    EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
                )
                await channel.declare_exchange(
                    DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
                )
                await self._declare_consumer_queues(connection)
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                await connection.close()
                raise BusUnavailable(f"RabbitMQ went away during start: {exc!r}") from exc
            except BaseException:
                await connection.close()
                raise
            # A broker that comes back empty (no persistent storage) has lost the queues of
            # consumers that do not run here; aio-pika restores only what this bus consumes.
            connection.reconnect_callbacks.add(self._redeclare)
            self._connection = connection
            log.info("event bus connected to RabbitMQ at %s", connection)

    async def ready(self) -> None:
        connection = self._connection
        if connection is None:
            raise BusUnavailable("not connected to RabbitMQ")
        if not connection.connected.is_set():
            raise BusUnavailable("RabbitMQ connection lost, reconnecting")

    async def _redeclare(self, connection: AbstractRobustConnection | None, /) -> None:
        if connection is None:  # aio-pika passes a weak reference's target
            return
        try:
            await self._declare_consumer_queues(connection)
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            log.warning("could not declare the consumer queues again: %r", exc)
        else:
            log.info("event bus reconnected to RabbitMQ, consumer queues declared")

    async def _declare_consumer_queues(self, connection: AbstractConnection) -> None:
        """Declare each queue of the table on a throwaway channel (a queue that exists with
        other arguments closes the channel it was declared on)."""
        for queue, patterns in self._queues.items():
            channel = await connection.channel(publisher_confirms=False)
            try:
                await _declare_queue(channel, queue, patterns, self._max_deliveries)
            except ChannelPreconditionFailed:
                log.warning("queue %s exists with other arguments; keeping them", queue)
            finally:
                await _close(channel)

    async def close(self) -> None:
        """Cancel the consumers and disconnect; envelopes not yet acknowledged (handlers still
        running are cancelled) go back to their queues and are delivered again."""
        async with self._lock:
            connection, self._connection, self._exchange = self._connection, None, None
            consumers, self._consumers = self._consumers, []
            if connection is None:
                return
            for consumer in consumers:
                try:
                    await consumer.queue.cancel(consumer.tag, timeout=5)
                except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                    log.warning("could not cancel consumer on %s: %r", consumer.queue.name, exc)
            await connection.close()
            log.info("event bus disconnected from RabbitMQ")

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Publish the batch and wait for every confirm; any failure is :class:`BusUnavailable`.

        A batch that fails part-way may have been partly stored: the caller publishes it again
        and consumers, being idempotent by envelope id, absorb the duplicates.
        """
        if not envelopes:
            return
        bodies = [envelope.model_dump_json().encode() for envelope in envelopes]
        too_large = {
            envelope.id: f"{len(body)} bytes, over the bus's {self._max_message_bytes}"
            for envelope, body in zip(envelopes, bodies, strict=True)
            if len(body) > self._max_message_bytes
        }
        if too_large:
            # Sent, it would close the publishing channel: every later batch would fail too.
            raise EnvelopeRejected(too_large)
        if self._connection is None:
            await self.start()
        connection, exchange = self._connection, self._exchange
        if connection is None or exchange is None:
            raise BusUnavailable("the bus was closed")
        if not connection.connected.is_set():
            raise BusUnavailable("RabbitMQ connection lost, reconnecting")
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                # Tasks start in order and aiormq writes frames under a FIFO lock, so the
                # broker receives the batch in order; the confirms are awaited together.
                results = await asyncio.gather(
                    *(
                        exchange.publish(_message(envelope, body), envelope.type, mandatory=False)
                        for envelope, body in zip(envelopes, bodies, strict=True)
                    ),
                    return_exceptions=True,
                )
        except TimeoutError as exc:
            raise BusUnavailable(
                f"RabbitMQ did not confirm {len(envelopes)} envelopes "
                f"within {self._publish_timeout_s}s"
            ) from exc
        failures = [result for result in results if isinstance(result, BaseException)]
        nacked = {
            envelope.id: f"refused by the broker: {result!r}"
            for envelope, result in zip(envelopes, results, strict=True)
            if isinstance(result, DeliveryError)
        }
        if nacked and len(nacked) == len(failures) and len(nacked) < len(envelopes):
            # The broker took the others: these envelopes, not the bus, are the problem.
            raise EnvelopeRejected(nacked)
        if failures:
            raise BusUnavailable(
                f"RabbitMQ refused {len(failures)} of {len(envelopes)} envelopes: {failures[0]!r}"
            ) from failures[0]

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, max_deliveries: int = 5
    ) -> None:
        """Declare ``queue`` (quorum), its bindings and ``<queue>.dlq``, then consume."""
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if self._connection is None:
            await self.start()
        connection = self._connection
        if connection is None:
            raise BusUnavailable("the bus was closed")
        try:
            declared, tag = await self._consume(
                connection, queue, patterns, handler, max_deliveries
            )
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            # The broker went away meanwhile: the caller subscribes again once it is back.
            raise BusUnavailable(f"could not subscribe {queue}: {exc!r}") from exc
        self._consumers.append(_Consumer(declared, tag))
        log.info("consuming %s (%s), max_deliveries=%d", queue, ", ".join(patterns), max_deliveries)

    async def _consume(
        self,
        connection: AbstractRobustConnection,
        queue: str,
        patterns: Sequence[str],
        handler: Handler,
        max_deliveries: int,
    ) -> tuple[AbstractQueue, ConsumerTag]:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        try:
            declared = await _declare_queue(channel, queue, patterns, max_deliveries)
        except ChannelPreconditionFailed:
            # Queue arguments are fixed once a queue exists (an operator changes them with a
            # policy); keep consuming the existing queue rather than refusing to start.
            log.warning(
                "queue %s exists with other arguments; keeping them (wanted max_deliveries=%d)",
                queue,
                max_deliveries,
            )
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            declared = await channel.declare_queue(queue, passive=True)
            for pattern in patterns:
                await declared.bind(EXCHANGE, routing_key=pattern)

        async def on_message(message: AbstractIncomingMessage) -> None:
            await _deliver(queue, handler, message)

        return declared, await declared.consume(on_message)

    async def unsubscribe(self, queue: str) -> None:
        keep = []
        for consumer in self._consumers:
            if consumer.queue.name != queue:
                keep.append(consumer)
                continue
            try:
                await consumer.queue.cancel(consumer.tag, timeout=5)
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                log.warning("could not cancel consumer on %s: %r", queue, exc)
        self._consumers = keep

    async def dead_letter_counts(self) -> dict[str, int]:
        """The platform's consumer queues, and those declared or subscribed here (AMQP
        cannot list queues); a queue whose dead-letter queue does not exist is left out."""
        names = sorted(
            {
                *CONSUMER_QUEUES,
                *self._queues,
                *(consumer.queue.name for consumer in self._consumers),
            }
        )
        counts = {}
        for name in names:
            channel = await self._channel()
            try:
                dlq = await channel.declare_queue(f"{name}.dlq", passive=True, robust=False)
                counts[name] = dlq.declaration_result.message_count or 0
            except ChannelNotFoundEntity:
                continue
            finally:
                await _close(channel)
        return counts

    async def dead_letters(self, queue: str, *, limit: int | None = None) -> list[DeadLetter]:
        """Read ``<queue>.dlq`` without consuming it (an undeclared queue has none)."""
        channel = await self._channel()
        try:
            held = await _hold_dead_letters(channel, queue, limit)
            try:
                return [_dead_letter(message) for message in held]
            finally:
                for message in held:
                    await message.nack(requeue=True)
        finally:
            await _close(channel)

    async def replay_dead_letters(self, queue: str, *, ids: Collection[str] | None = None) -> int:
        """Publish the chosen dead letters to ``queue`` through the default exchange (which
        routes by queue name: no other consumer sees them), with confirms, then drop them
        from the dead-letter queue; the others are put back in place."""
        replayed = 0
        channel = await self._channel(confirms=True)
        try:
            try:
                await channel.declare_queue(queue, passive=True, robust=False)
            except ChannelNotFoundEntity:
                raise LookupError(f"no queue {queue!r} on the broker") from None
            held = await _hold_dead_letters(channel, queue, None)
            try:
                for message in list(held):
                    if ids is not None and _dead_letter(message).id not in ids:
                        continue
                    # mandatory: a message the broker cannot route (the queue went away
                    # meanwhile) comes back as an error, and stays a dead letter.
                    await channel.default_exchange.publish(
                        _replayed(message), routing_key=queue, mandatory=True
                    )
                    await message.ack()
                    held.remove(message)
                    replayed += 1
            finally:
                for message in held:
                    await message.nack(requeue=True)
        finally:
            await _close(channel)
        log.info("replayed %d dead letters of %s", replayed, queue)
        return replayed

    async def purge_dead_letters(self, queue: str) -> int:
        channel = await self._channel()
        try:
            dlq = await channel.declare_queue(f"{queue}.dlq", passive=True, robust=False)
            purged = (await dlq.purge()).message_count or 0
        except ChannelNotFoundEntity:
            return 0
        finally:
            await _close(channel)
        log.info("purged %d dead letters of %s", purged, queue)
        return purged

    async def _channel(self, *, confirms: bool = False) -> AbstractRobustChannel:
        if self._connection is None:
            await self.start()
        connection = self._connection
        if connection is None:
            raise BusUnavailable("the bus was closed")
        return await connection.channel(publisher_confirms=confirms)


async def _close(channel: AbstractChannel) -> None:
    if not channel.is_closed:
        await channel.close()


async def _hold_dead_letters(
    channel: AbstractRobustChannel, queue: str, limit: int | None
) -> list[AbstractIncomingMessage]:
    """Fetch up to ``limit`` messages of ``<queue>.dlq`` unacknowledged (so each fetch returns
    the next one); the caller acks or returns each."""
    try:
        dlq = await channel.declare_queue(f"{queue}.dlq", passive=True, robust=False)
    except ChannelNotFoundEntity:
        return []
    held: list[AbstractIncomingMessage] = []
    try:
        while limit is None or len(held) < limit:
            message = await dlq.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
    except BaseException:
        for message in held:
            await message.nack(requeue=True)
        raise
    return held


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    # x-death: newest first, one entry per (queue, reason); our only reject without requeue
    # is a poison message's, the broker's own is the delivery limit's.
    deaths = message.headers.get("x-death")
    reason = DELIVERY_LIMIT
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = POISON if deaths[0].get("reason") == "rejected" else DELIVERY_LIMIT
    # Quorum queues count earlier returns in x-delivery-count; the dead-lettering call is one
    # more (a poison message never reached a handler).
    returns = message.headers.get("x-delivery-count")
    deliveries = 0 if reason == POISON else (returns if isinstance(returns, int) else 0) + 1
    return DeadLetter(
        dead_letter_id(message.message_id, message.body), message.body, reason, deliveries
    )


def _replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The dead letter as it was first published: same body and properties, no death record."""
    headers = {
        key: value
        for key, value in message.headers.items()
        if key not in ("x-death", "x-delivery-count")
        and not key.startswith("x-first-death")
        and not key.startswith("x-last-death")
    }
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        app_id=message.app_id,
    )


async def _declare_queue(
    channel: AbstractChannel, queue: str, patterns: Sequence[str], max_deliveries: int
) -> AbstractQueue:
    """Declare ``queue`` (quorum, durable) bound to ``patterns``, and ``<queue>.dlq``.

    RabbitMQ counts a *return* (a nack with requeue, or a consumer that vanished) against
    ``x-delivery-limit`` and dead-letters the message once the count exceeds the limit;
    a limit of ``max_deliveries - 1`` therefore allows exactly ``max_deliveries`` calls.
    """
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlq = await channel.declare_queue(f"{queue}.dlq", durable=True, arguments=QUORUM)
    await dlq.bind(dlx, routing_key=queue)
    arguments: FieldTable = {
        **QUORUM,
        "x-delivery-limit": max_deliveries - 1,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue,
    }
    declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
    for pattern in patterns:
        await declared.bind(EXCHANGE, routing_key=pattern)
    return declared


def _message(envelope: Envelope, body: bytes) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(envelope.id),
        type=envelope.type,
        correlation_id=envelope.correlation_id,
        timestamp=envelope.occurred_at,
        app_id=envelope.producer,
    )


async def _deliver(queue: str, handler: Handler, message: AbstractIncomingMessage) -> None:
    """Acknowledge after the handler returns; requeue on failure; dead-letter poison at once.

    A lost channel makes the settlement fail: that is logged, not raised, because the broker
    already puts the unacknowledged message back for the next consumer.
    """
    try:
        envelope = Envelope.model_validate_json(message.body)
    except ValidationError as exc:
        log.warning(
            "poison message dead-lettered: queue=%s message_id=%s errors=%d",
            queue,
            message.message_id,
            exc.error_count(),
        )
        await _settle(queue, message, message.reject(requeue=False))
        return
    try:
        await handler(envelope)
    except Exception:
        log.exception(
            "handler failed, envelope requeued: queue=%s event_id=%s type=%s",
            queue,
            envelope.id,
            envelope.type,
        )
        await _settle(queue, message, message.nack(requeue=True))
        return
    await _settle(queue, message, message.ack())


async def _settle(
    queue: str, message: AbstractIncomingMessage, settlement: Awaitable[None]
) -> None:
    try:
        await settlement
    except CONNECTION_EXCEPTIONS as exc:
        log.warning(
            "could not settle message, the broker will redeliver it: queue=%s message_id=%s %r",
            queue,
            message.message_id,
            exc,
        )
