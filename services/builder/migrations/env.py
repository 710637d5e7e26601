"""Alembic environment of the builder (run through services.common.migrations.upgrade)."""

from sqlmodel import SQLModel

import services.builder.builds.models
import services.builder.deployments.models
import services.common.events.consumer
import services.common.events.outbox  # noqa: F401 - register the tables
from services.common.migrations import run_migrations

run_migrations(SQLModel.metadata)
