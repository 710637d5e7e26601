"""file entries lose their MD5: the pipe's crc is the SHA-256 the entry already holds

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("file_entry", schema=None) as batch_op:
        batch_op.drop_column("md5")


def downgrade() -> None:
    # The MD5s are gone: entries come back with an empty one, as a file of unknown crc.
    with op.batch_alter_table("file_entry", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "md5",
                sqlmodel.sql.sqltypes.AutoString(length=32),
                nullable=False,
                server_default="",
            )
        )
