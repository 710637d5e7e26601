"""The event bus on RabbitMQ: a durable topic exchange, quorum queues, dead-letter queues.

Publishing uses one channel with publisher confirms and persistent messages, so
:meth:`RabbitBus.publish` returns only once the broker has stored every envelope. Each
subscription gets its own channel (its prefetch, and a channel error there stops only that
consumer) and a quorum queue whose ``x-delivery-limit`` makes the broker dead-letter an
envelope after ``max_deliveries`` handler calls.

The connection is robust: when the broker restarts, aio-pika reconnects in the background and
re-declares the exchanges, queues, bindings and consumers. While it is away, ``publish``
raises :class:`BusUnavailable` at once (or after ``publish_timeout_s`` if the connection dies
mid-batch) instead of waiting for the broker, so the outbox relay backs off and retries.
"""

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import (
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
)
from pydantic import ValidationError

from modelcloud_proto.events import Envelope
from services.common.events.bus import (
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    BusUnavailable,
    Handler,
)

log = logging.getLogger(__name__)

QUORUM = {"x-queue-type": "quorum"}


@dataclass(frozen=True)
class _Consumer:
    queue: AbstractQueue
    tag: ConsumerTag


class RabbitBus:
    """:class:`~services.common.events.bus.EventBus` on RabbitMQ (``url`` like ``amqp://…``).

    ``prefetch`` bounds how many envelopes one subscription handles at once: the handler may
    run concurrently for different envelopes of the same queue, so order of completion is
    not guaranteed (order of delivery is, as long as nothing is redelivered). ``name`` labels
    the connection in the broker's tools.
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
    ) -> None:
        self._url = url
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
        """Connect, open the publishing channel and declare both exchanges.

        Raises :class:`BusUnavailable` when the broker cannot be reached: the first
        connection fails fast; only later losses are retried in the background.
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
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
            log.info("event bus connected to RabbitMQ at %s", connection)

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
                        exchange.publish(_message(envelope), envelope.type, mandatory=False)
                        for envelope in envelopes
                    ),
                    return_exceptions=True,
                )
        except TimeoutError as exc:
            raise BusUnavailable(
                f"RabbitMQ did not confirm {len(envelopes)} envelopes "
                f"within {self._publish_timeout_s}s"
            ) from exc
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise BusUnavailable(
                f"RabbitMQ refused {len(failures)} of {len(envelopes)} envelopes: {failures[0]!r}"
            ) from failures[0]

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, max_deliveries: int = 5
    ) -> None:
        """Declare ``queue`` (quorum), its bindings and ``<queue>.dlq``, then consume.

        RabbitMQ counts a *return* (a nack with requeue, or a consumer that vanished) against
        ``x-delivery-limit`` and dead-letters the message once the count exceeds the limit;
        a limit of ``max_deliveries - 1`` therefore allows exactly ``max_deliveries`` calls.
        """
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if self._connection is None:
            await self.start()
        connection = self._connection
        if connection is None:
            raise BusUnavailable("the bus was closed")
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        await _declare_dead_letter_queue(channel, queue)
        arguments = {
            **QUORUM,
            "x-delivery-limit": max_deliveries - 1,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": queue,
        }
        try:
            declared = await channel.declare_queue(queue, durable=True, arguments=arguments)
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

        tag = await declared.consume(on_message)
        self._consumers.append(_Consumer(declared, tag))
        log.info("consuming %s (%s), max_deliveries=%d", queue, ", ".join(patterns), max_deliveries)

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

    async def dead_letters(self, queue: str) -> list[bytes]:
        """Read ``<queue>.dlq`` without consuming it.

        Every message is fetched unacknowledged (so each fetch returns the next one), and all
        are returned to the queue at the end; quorum queues put a returned message back in its
        place, so the order stays oldest first. An undeclared queue has no dead letters.
        """
        if self._connection is None:
            await self.start()
        connection = self._connection
        if connection is None:
            raise BusUnavailable("the bus was closed")
        channel = await connection.channel(publisher_confirms=False)
        try:
            try:
                dlq = await channel.declare_queue(f"{queue}.dlq", passive=True, robust=False)
            except ChannelNotFoundEntity:
                return []
            held: list[AbstractIncomingMessage] = []
            try:
                while (message := await dlq.get(no_ack=False, fail=False)) is not None:
                    held.append(message)
            finally:
                for message in held:
                    await message.nack(requeue=True)
            return [message.body for message in held]
        finally:
            if not channel.is_closed:
                await channel.close()


async def _declare_dead_letter_queue(channel: AbstractRobustChannel, queue: str) -> None:
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlq = await channel.declare_queue(f"{queue}.dlq", durable=True, arguments=QUORUM)
    await dlq.bind(dlx, routing_key=queue)


def _message(envelope: Envelope) -> aio_pika.Message:
    return aio_pika.Message(
        envelope.model_dump_json().encode(),
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
