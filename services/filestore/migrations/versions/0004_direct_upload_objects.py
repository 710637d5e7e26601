"""a direct upload's object belongs to its entries, not to its claimed digest

Before, completing a direct upload placed its object under the SHA-256 the client claimed,
for every project: a project that did not hold the content could claim its digest and read
another project's file. The object is now named by the entries of the project that
uploaded it (``file_entry.object_key``) and ``blob_placement`` keeps only content the file
store verified. Existing placements of direct uploads (``objects/<project>/<upload id>``)
move to the entries of that project with that digest. Entries of other projects that read
such an object through its digest lose it (their project never proved it held the bytes):
their files have to be uploaded again.

What this cannot undo: when the content was already stored otherwise (a through upload,
under its content address or in an object of its own, or a pack), the old completion
dropped the claimant's object and recorded an entry with no placement at all. Such an
entry still reads the first project's bytes after this migration, and nothing in the rows
tells it from an honest upload of the same content. So the migration logs, for an audit
(logger ``modelcloud.filestore.migrations``, warning), every digest held by entries of
more than one project together with each project whose first entry for it came no earlier
than another project's (by ``uploaded_at``, which a later upload of the same path moves: a
lead, not a verdict). Removing a claimed entry is left to an operator.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:50:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The direct upload placements of the entry's own project (SQLite and PostgreSQL alike: no
# LIKE, whose wildcards a project name's "_" would be).
_OWN_UPLOAD = """
    FROM blob_placement AS p
    WHERE p.sha256 = file_entry.sha256
      AND substr(p."key", 1, length('objects/' || file_entry.project || '/'))
          = 'objects/' || file_entry.project || '/'
"""


log = logging.getLogger("modelcloud.filestore.migrations")

# Per digest and project, its first entry; a project whose first entry came no earlier than
# another project's may have claimed the digest (SQLite and PostgreSQL alike). Only entries
# without an object of their own can read another project's bytes: one reading its
# project's own direct upload (object_key, set above) reads what that project sent.
_LATER_HOLDERS = """
    WITH firsts AS (
        SELECT sha256, project, min(uploaded_at) AS first_at,
               sum(CASE WHEN object_key IS NULL THEN 1 ELSE 0 END) AS entries
        FROM file_entry GROUP BY sha256, project
    )
    SELECT later.sha256, later.project, later.entries, min(earlier.project)
    FROM firsts AS later JOIN firsts AS earlier
      ON earlier.sha256 = later.sha256 AND earlier.project <> later.project
     AND earlier.first_at <= later.first_at
    WHERE later.entries > 0
    GROUP BY later.sha256, later.project, later.entries
    ORDER BY later.sha256, later.project
"""


def _log_later_holders() -> None:
    for sha256, project, entries, earlier in op.get_bind().execute(sa.text(_LATER_HOLDERS)):
        log.warning(
            "content first stored by another project is read by this one: check that it"
            " was uploaded, not claimed",
            extra={"sha256": sha256, "project": project, "entries": entries, "first": earlier},
        )


def upgrade() -> None:
    with op.batch_alter_table("file_entry", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("object_key", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True)
        )
    op.execute(
        f'UPDATE file_entry SET object_key = (SELECT min(p."key") {_OWN_UPLOAD})'  # noqa: S608 - constant
        f" WHERE EXISTS (SELECT 1 {_OWN_UPLOAD})"
    )
    # Direct uploads' keys have two slashes; through uploads' own objects one.
    op.execute("""DELETE FROM blob_placement WHERE "key" LIKE 'objects/%/%'""")
    _log_later_holders()


def downgrade() -> None:
    op.execute(
        'INSERT INTO blob_placement (sha256, "key", "offset", size)'
        " SELECT DISTINCT sha256, object_key, 0, size FROM file_entry"
        " WHERE object_key IS NOT NULL"
    )
    with op.batch_alter_table("file_entry", schema=None) as batch_op:
        batch_op.drop_column("object_key")
