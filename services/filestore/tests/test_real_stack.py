"""The file store on PostgreSQL: the same checks as on SQLite, and files of 2 GiB and more."""

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_testing.servers import fresh_postgres_database
from services.filestore.files.service import Content, record
from services.filestore.tests import test_files as files
from services.filestore.tests import test_transfers as transfers
from services.filestore.tests.conftest import Stack, _stack

pytestmark = pytest.mark.postgres

CHECKS: list[Callable[[Stack], Awaitable[None]]] = [
    files.test_upload_and_download_on_the_local_store,
    files.test_identical_content_is_stored_once_and_unchanged_pushes_send_nothing,
    files.test_a_wrong_or_truncated_upload_commits_nothing,
    files.test_an_upload_without_a_digest_is_kept_under_the_one_computed,
    files.test_a_path_named_twice_in_one_link_is_linked_once,
    transfers.test_a_pack_stores_every_file_in_one_request,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_the_file_store_on_postgres(
    tmp_path: Path, check: Callable[[Stack], Awaitable[None]]
) -> None:
    async with fresh_postgres_database() as database:
        async for stack in _stack(tmp_path, database_url=database):
            await check(stack)


async def test_a_file_of_3_gib_is_recorded_on_postgres(tmp_path: Path) -> None:
    # PostgreSQL's INTEGER stops short of 2 GiB: sizes are 64-bit.
    async with fresh_postgres_database() as database:
        async for stack in _stack(tmp_path, database_url=database):
            engine = create_async_engine(database)
            try:
                async with AsyncSession(engine) as session:
                    where = ("vision", "classifier", "v1")
                    await record(
                        session,
                        where,
                        "huge.bin",
                        Content("a" * 64, 3 << 30),
                        None,
                        "ada",
                    )
                    await session.commit()
            finally:
                await engine.dispose()
            listing = (await stack.files.get(f"{files.BASE}/files")).json()
            assert [(f["path"], f["size"]) for f in listing] == [("huge.bin", 3 << 30)]
