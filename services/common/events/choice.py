"""The bus a service's settings ask for: RabbitMQ when a broker URL is set, else the local
bus in the data folder (the embedded default)."""

from services.common.events.bus import EventBus
from services.common.settings import ServiceSettings


def bus_for(settings: ServiceSettings) -> EventBus:
    if settings.broker_url is not None:
        from services.common.events.rabbitmq import RabbitBus

        return RabbitBus(settings.broker_url.get_secret_value())
    from services.common.events.local import LocalBus

    return LocalBus(settings.local_bus_path())
