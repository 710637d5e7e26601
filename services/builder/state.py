"""What the builder's request handlers work with, built at start by ``main.py``."""

from dataclasses import dataclass

from services.builder.builds.logs import BuildLogs
from services.builder.deployments.supervisor import Supervisor
from services.builder.settings import BuilderSettings
from services.common.access import RegistryAccess
from services.common.runtime import Database


@dataclass(frozen=True)
class BuilderState:
    settings: BuilderSettings
    database: Database
    access: RegistryAccess
    build_logs: BuildLogs
    supervisor: Supervisor
