"""The registry's unit of work: the shared one, with the registry as the events' producer."""

from dataclasses import dataclass

from services.common.unit_of_work import UnitOfWork as _UnitOfWork

PRODUCER = "registry"


@dataclass
class UnitOfWork(_UnitOfWork):
    producer: str = PRODUCER
