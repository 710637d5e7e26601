"""What the registry's request handlers work with, built at start by ``main.py``."""

from dataclasses import dataclass

from services.common.events.outbox import OutboxRelay
from services.common.runtime import Database
from services.registry.bundles.store import BundleStore
from services.registry.settings import RegistrySettings


@dataclass(frozen=True)
class RegistryState:
    settings: RegistrySettings
    database: Database
    relay: OutboxRelay
    bundles: BundleStore
