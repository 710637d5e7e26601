"""``FILESTORE_UPLOAD_MAX_AGE_S`` is enforced by the uploads themselves: one that took
longer is refused at its end (410) and records nothing, so what start-up clean-up and the
collector remove for being older than that is never an upload still on its way."""

import time
from types import SimpleNamespace

import httpx
import pytest

from services.filestore.tests.conftest import Stack
from services.filestore.tests.test_collector import BASE, sha, stored_keys
from services.filestore.tests.test_transfers import (
    direct_upload,
    leftovers,
    listed,
    pack,
    send_pack,
)


@pytest.fixture
def late(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every upload ends a day and a second after it started (the limit is a day)."""
    ahead = SimpleNamespace(time=lambda: time.time() + 24 * 3600 + 1)
    monkeypatch.setattr("services.filestore.files.expiry.time", ahead)


def assert_gone(answer: httpx.Response) -> None:
    assert answer.status_code == 410, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "upload it again" in answer.json()["detail"]


async def test_an_upload_through_the_store_over_the_limit_keeps_nothing(
    stack: Stack, late: None
) -> None:
    data = b"slow weights" * 100
    answer = await stack.files.put(
        f"{BASE}/files/slow.bin", content=data, headers={"X-Content-SHA256": sha(data)}
    )
    assert_gone(answer)
    assert await listed(stack) == []
    assert stored_keys(stack) == set()


async def test_a_pack_over_the_limit_keeps_nothing(stack: Stack, late: None) -> None:
    assert_gone(await send_pack(stack, pack({"a.txt": b"a", "b.txt": b"b"})))
    assert await listed(stack) == []
    assert stored_keys(stack) == set()


@pytest.mark.s3
async def test_a_direct_upload_completed_over_the_limit_keeps_nothing(
    s3_stack: Stack, late: None
) -> None:
    assert_gone(await direct_upload(s3_stack, b"slow" * 1000))
    assert await listed(s3_stack) == []
    assert leftovers(s3_stack) == ([], [])
