"""One runtime for every service (``runtime.py`` says how it starts and stops)."""

from services.common.runtime.backoff import Backoff
from services.common.runtime.database import DATABASE, Database
from services.common.runtime.parts import Part, PartDown
from services.common.runtime.runtime import EVENT_BUS, ServiceRuntime, service_lifespan
from services.common.runtime.state import service_state, set_service_state, state_of
from services.common.runtime.workers import Worker

__all__ = [
    "DATABASE",
    "EVENT_BUS",
    "Backoff",
    "Database",
    "Part",
    "PartDown",
    "ServiceRuntime",
    "Worker",
    "service_lifespan",
    "service_state",
    "set_service_state",
    "state_of",
]
