"""Events between services: the bus (RabbitMQ, or a durable local one for the embedded
default), the transactional outbox that feeds it, and idempotent consumers."""
