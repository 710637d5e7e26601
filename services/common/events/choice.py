"""The bus a service's settings ask for: RabbitMQ when a broker URL is set, else the local
bus in the data folder (the embedded default)."""

from services.common.events.bus import EventBus
from services.common.settings import ServiceSettings


def bus_for(settings: ServiceSettings) -> EventBus:
    """Consumer queues are declared at start with ``settings.max_deliveries``."""
    if settings.broker_url is not None:
        from services.common.events.rabbitmq import RabbitBus

        return RabbitBus(
            settings.broker_url.get_secret_value(),
            name=settings.service_name,
            max_deliveries=settings.max_deliveries,
        )
    from services.common.events.local import LocalBus

    return LocalBus(settings.local_bus_path(), max_deliveries=settings.max_deliveries)
