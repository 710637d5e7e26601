"""Alembic environment of the metrics service (run through services.common.migrations.upgrade)."""

from sqlmodel import SQLModel

import services.metrics.runs.models  # noqa: F401 - registers the tables
from services.common.migrations import run_migrations

_TABLES = {"run", "run_param", "metric_point"}

run_migrations(
    SQLModel.metadata,
    include_name=lambda name, type_, parent: type_ != "table" or name in _TABLES,
)
