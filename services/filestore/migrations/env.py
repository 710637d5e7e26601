"""Alembic environment of the file store (run through services.common.migrations.upgrade)."""

from sqlmodel import SQLModel

import services.filestore.files.models  # noqa: F401 - registers the table
from services.common.migrations import run_migrations

run_migrations(
    SQLModel.metadata,
    include_name=lambda name, type_, parent: type_ != "table" or name == "file_entry",
)
