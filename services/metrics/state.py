"""What the metrics service's request handlers work with, built at start by ``main.py``."""

from dataclasses import dataclass

from services.common.access import RegistryAccess
from services.common.runtime import Database
from services.metrics.runs.live import LiveHub
from services.metrics.settings import MetricsSettings


@dataclass(frozen=True)
class MetricsState:
    settings: MetricsSettings
    database: Database
    access: RegistryAccess
    live: LiveHub
