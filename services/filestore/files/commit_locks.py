"""The lock that keeps the blob collector from deleting what an upload is about to record.

An upload writes (or finds) its bytes first and records the file entry that reads them
later; the collector finds an object unreferenced first and deletes it later. Either may
run in the other's gap, so both take, in ONE transaction each, the lock named after the
content's digest (and, for an object of its own, its key):

* the collector: lock every name of the objects it is about to delete, check once more
  that no entry refers to them, drop their placements, delete the objects, commit;
* an upload (through the file store, direct, a pack, a link): lock the names of what its
  entries will read, check that it still exists (or write it), record the entries, commit;
  if it is gone, record nothing and answer 503 (the pipe sends the file again).

Whichever locks first finishes first: the collector then finds the new entry, or the
upload finds the object gone. PostgreSQL: a transaction-level advisory lock per name, freed
at commit or rollback. SQLite: every transaction begins IMMEDIATE
(``services/common/database.py``), so its first statement takes the database's write lock,
one lock for every name.
"""

from collections.abc import Iterable

from sqlalchemy import literal, text
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.migrations import advisory_key

# Digests and object keys: apart from every other user of advisory locks.
_NAMESPACE = "modelcloud.filestore.content"


async def lock_names(session: AsyncSession, names: Iterable[str]) -> None:
    """Hold the locks of ``names`` until the session's transaction ends; call it before
    anything else in that transaction checks what it protects."""
    if session.get_bind().dialect.name != "postgresql":
        await session.exec(select(literal(1)))  # begins the transaction: the write lock
        return
    keys = sorted({advisory_key(name, namespace=_NAMESPACE) for name in names})
    if keys:  # one round trip, taken in one order (two lockers never wait for each other)
        connection = await session.connection()  # the session's own transaction
        await connection.execute(_LOCK_ALL, {"keys": keys})


_LOCK_ALL = text(
    "SELECT count(pg_advisory_xact_lock(k)) "
    "FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY k) AS sorted"
)
