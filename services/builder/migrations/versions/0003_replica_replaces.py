"""a replacement replica names the dead one it replaces until the swap commits, so one
interrupted half way is found and undone instead of leaving two replicas on one port

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("replica", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replaces", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("replica", schema=None) as batch_op:
        batch_op.drop_column("replaces")
