"""Alembic environment of the registry (run through services.common.migrations.upgrade)."""

from sqlmodel import SQLModel

import services.common.events.consumer
import services.common.events.outbox
import services.registry.accounts.models
import services.registry.model_services.models
import services.registry.projects.models
import services.registry.versions.models  # noqa: F401 - register the tables
from services.common.migrations import run_migrations

run_migrations(SQLModel.metadata)
