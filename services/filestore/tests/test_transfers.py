"""Presigned direct transfers (S3) and upload packs: bytes that skip the file store are
still checked by it, a bad upload or pack stores nothing and leaves no parts behind."""

import hashlib
import io
import tarfile
from typing import Any

import httpx
import pytest

from services.filestore.tests.conftest import Stack, bucket_client
from services.filestore.transfers.service import PACK_SHA256

BASE = "/v1/projects/vision/models/classifier/versions/v1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(files: dict[str, bytes], *, digests: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            info.pax_headers = {PACK_SHA256: (digests or {}).get(name, sha(data))}
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sparse_pack() -> bytes:
    """A sparse member (3 bytes stored, 10 read back): its bytes in the pack are not the
    file, so it could not be read back as a range of the pack."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("sparse.bin")
        info.size = 3
        info.pax_headers = {
            "GNU.sparse.map": "0,3",
            "GNU.sparse.size": "10",
            PACK_SHA256: sha(b"abc" + bytes(7)),
        }
        archive.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


async def send_pack(stack: Stack, body: bytes, **headers: str) -> httpx.Response:
    return await stack.files.post(
        f"{BASE}/packs", content=body, headers={"Content-Type": "application/x-tar", **headers}
    )


async def listed(stack: Stack) -> list[str]:
    return [f["path"] for f in (await stack.files.get(f"{BASE}/files")).json()]


async def direct_upload(
    stack: Stack, data: bytes, *, declared: bytes | None = None, path: str = "big.bin"
) -> httpx.Response:
    """Start, PUT the parts straight to S3, complete: as the pipe does."""
    digest = sha(declared if declared is not None else data)
    size = len(declared if declared is not None else data)
    started = await stack.files.post(
        f"{BASE}/uploads", json={"path": path, "sha256": digest, "size": size}
    )
    assert started.status_code == 201, started.text
    ticket: dict[str, Any] = started.json()
    part_size = ticket["part_size"]
    etags = []
    async with httpx.AsyncClient() as s3:
        for number, url in enumerate(ticket["urls"]):
            part = data[number * part_size : (number + 1) * part_size]
            if part:
                answer = await s3.put(url, content=part)
                assert answer.status_code == 200, answer.text
                etags.append(answer.headers["etag"])
    return await stack.files.post(
        f"{BASE}/uploads/{ticket['upload_id']}/complete",
        json={
            "path": path,
            "sha256": digest,
            "size": size,
            "multipart_id": ticket["multipart_id"],
            "etags": etags,
        },
    )


def leftovers(stack: Stack) -> tuple[list[str], list[str]]:
    """Staged objects and unfinished multipart uploads left in the bucket."""
    client = bucket_client(stack)
    bucket = stack.settings.s3_bucket
    staged = client.list_objects_v2(Bucket=bucket, Prefix="incoming/").get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [o["Key"] for o in staged], [u["Key"] for u in uploads]


async def test_a_pack_stores_every_file_in_one_request(stack: Stack) -> None:
    files = {"a.py": b"a = 1\n", "features/b.json": b"[]", "empty.txt": b""}
    stored = await send_pack(stack, pack(files))
    assert stored.status_code == 201, stored.text
    assert sorted(f["path"] for f in stored.json()) == sorted(files)
    for name, data in files.items():
        assert (await stack.files.get(f"{BASE}/files/{name}")).content == data
    entry = next(f for f in (await stack.files.get(f"{BASE}/files")).json() if f["path"] == "a.py")
    assert entry["modified_at"].startswith("2020-09-13")  # the member's mtime is kept


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (pack({"ok.py": b"x", "bad.py": b"y"}, digests={"bad.py": "0" * 64}), "pack[1]"),
        (pack({"ok.py": b"x", "../escape.py": b"y"}), "path"),
        (pack({"ok.py": b"x", "/etc/passwd": b"y"}), "path"),
        (b"this is not a tar archive" * 40, "body"),
        (sparse_pack(), "pack[0]"),
    ],
)
async def test_a_bad_pack_stores_nothing(stack: Stack, body: bytes, field: str) -> None:
    answer = await send_pack(stack, body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["field"].startswith(field)
    assert await listed(stack) == []


async def test_a_pack_with_a_link_stores_nothing(stack: Stack) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        link = tarfile.TarInfo("weights.bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    answer = await send_pack(stack, buffer.getvalue())
    assert answer.status_code == 422
    assert "not a file" in answer.json()["detail"]
    assert await listed(stack) == []


async def test_packs_need_the_write_role(stack: Stack) -> None:
    token = await stack.registry.user_token("reader")
    await stack.registry.client.put("/v1/projects/vision/members/reader", json={"role": "read"})
    answer = await send_pack(stack, pack({"a.py": b"a"}), Authorization=f"Bearer {token}")
    assert answer.status_code == 403
    assert await listed(stack) == []


async def test_a_local_store_offers_no_direct_transfers(stack: Stack) -> None:
    limits = (await stack.files.get("/v1/transfers")).json()
    assert limits["direct_uploads"] is False
    assert limits["direct_downloads"] is False
    started = await stack.files.post(
        f"{BASE}/uploads", json={"path": "a.bin", "sha256": sha(b"a"), "size": 1}
    )
    assert started.status_code == 409
    assert started.headers["content-type"] == "application/problem+json"


@pytest.mark.s3
async def test_direct_uploads_are_offered_only_when_configured(s3_stack: Stack) -> None:
    limits = (await s3_stack.files.get("/v1/transfers")).json()
    assert (limits["direct_uploads"], limits["direct_downloads"]) == (False, True)
    started = await s3_stack.files.post(
        f"{BASE}/uploads", json={"path": "a.bin", "sha256": sha(b"a"), "size": 1}
    )
    assert started.status_code == 409


@pytest.mark.s3
@pytest.mark.parametrize("size", [1000, (11 << 20) + 7], ids=["one PUT", "three parts"])
async def test_a_direct_upload_is_checked_and_then_served(
    s3_direct_stack: Stack, size: int
) -> None:
    stack = s3_direct_stack
    data = (hashlib.sha256(b"weights").digest() * (size // 32 + 1))[:size]
    completed = await direct_upload(stack, data)
    assert completed.status_code == 201, completed.text
    assert completed.json()["sha256"] == sha(data)
    assert completed.json()["md5"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert leftovers(stack) == ([], [])
    links = await stack.files.post(f"{BASE}/downloads", json={"paths": ["big.bin"]})
    assert links.status_code == 200, links.text
    (link,) = links.json()["files"]
    assert (link["size"], link["sha256"]) == (size, sha(data))
    async with httpx.AsyncClient() as s3:
        assert (await s3.get(link["url"])).content == data
    assert (await stack.files.get(f"{BASE}/files/big.bin")).content == data


@pytest.mark.s3
@pytest.mark.parametrize("size", [1000, (11 << 20) + 7], ids=["one PUT", "three parts"])
async def test_a_direct_upload_with_a_wrong_checksum_keeps_nothing(
    s3_direct_stack: Stack, size: int
) -> None:
    stack = s3_direct_stack
    data = b"w" * size
    wrong = await direct_upload(stack, data, declared=b"v" * size)
    assert wrong.status_code == 422, wrong.text
    assert wrong.json()["errors"][0]["field"] == "sha256"
    assert await listed(stack) == []
    assert leftovers(stack) == ([], [])
    links = await stack.files.post(f"{BASE}/downloads", json={"paths": ["big.bin"]})
    assert links.status_code == 404


@pytest.mark.s3
async def test_a_truncated_direct_upload_keeps_nothing(s3_direct_stack: Stack) -> None:
    stack = s3_direct_stack
    data = b"w" * 1000
    started = await stack.files.post(
        f"{BASE}/uploads", json={"path": "big.bin", "sha256": sha(data), "size": 1000}
    )
    ticket = started.json()
    async with httpx.AsyncClient() as s3:
        await s3.put(ticket["urls"][0], content=data[:600])
    completed = await stack.files.post(
        f"{BASE}/uploads/{ticket['upload_id']}/complete",
        json={"path": "big.bin", "sha256": sha(data), "size": 1000},
    )
    assert completed.status_code == 422
    assert completed.json()["errors"][0]["field"] == "size"
    assert await listed(stack) == []
    assert leftovers(stack) == ([], [])


@pytest.mark.s3
async def test_completing_an_upload_that_never_happened_is_a_clear_422(
    s3_direct_stack: Stack,
) -> None:
    answer = await s3_direct_stack.files.post(
        f"{BASE}/uploads/8a6e0804-2bd0-4672-b79a-d97358d97cd4/complete",
        json={"path": "big.bin", "sha256": sha(b"x"), "size": 1},
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "upload_id"


@pytest.mark.s3
async def test_an_aborted_direct_upload_leaves_no_parts(s3_direct_stack: Stack) -> None:
    stack = s3_direct_stack
    size = 11 << 20
    started = await stack.files.post(
        f"{BASE}/uploads", json={"path": "big.bin", "sha256": sha(b"z"), "size": size}
    )
    ticket = started.json()
    assert ticket["multipart_id"]
    assert len(ticket["urls"]) == 3
    async with httpx.AsyncClient() as s3:
        await s3.put(ticket["urls"][0], content=b"z" * (5 << 20))
    aborted = await stack.files.delete(
        f"{BASE}/uploads/{ticket['upload_id']}", params={"multipart_id": ticket["multipart_id"]}
    )
    assert aborted.status_code == 204
    assert leftovers(stack) == ([], [])


@pytest.mark.s3
async def test_a_wrong_checksum_through_the_service_leaves_no_multipart_upload(
    s3_stack: Stack,
) -> None:
    data = b"q" * (20 << 20)  # several 8 MiB parts reach S3 before the digest is known
    wrong = await s3_stack.files.put(
        f"{BASE}/files/big.bin", content=data, headers={"X-Content-SHA256": sha(b"other")}
    )
    assert wrong.status_code == 422
    assert await listed(s3_stack) == []
    assert leftovers(s3_stack) == ([], [])
    client = bucket_client(s3_stack)
    assert client.list_objects_v2(Bucket=s3_stack.settings.s3_bucket).get("KeyCount") == 0


def keys(stack: Stack, prefix: str = "") -> list[str]:
    client = bucket_client(stack)
    listing = client.list_objects_v2(Bucket=stack.settings.s3_bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.mark.s3
async def test_a_pack_is_one_object_on_s3_and_each_file_reads_back(s3_stack: Stack) -> None:
    files = {f"f{i}.bin": bytes([i]) * (100 + i) for i in range(20)}
    files["same-as-f3.bin"] = files["f3.bin"]  # one content under two paths
    files["empty.txt"] = b""
    stored = await send_pack(s3_stack, pack(files))
    assert stored.status_code == 201, stored.text
    # One PUT for the whole pack, however many files it holds.
    assert keys(s3_stack) == keys(s3_stack, "packs/")
    assert len(keys(s3_stack)) == 1
    for name, data in files.items():
        assert (await s3_stack.files.get(f"{BASE}/files/{name}")).content == data
    links = await s3_stack.files.post(f"{BASE}/downloads", json={"paths": sorted(files)})
    assert links.status_code == 200, links.text
    async with httpx.AsyncClient() as s3:
        for link in links.json()["files"]:
            assert link["offset"] is not None
            if link["size"] == 0:
                continue
            last = link["offset"] + link["size"] - 1
            answer = await s3.get(link["url"], headers={"Range": f"bytes={link['offset']}-{last}"})
            assert answer.content == files[link["path"]]
            assert sha(answer.content) == link["sha256"]


@pytest.mark.s3
async def test_an_upload_without_a_digest_is_placed_and_read_back_on_s3(s3_stack: Stack) -> None:
    data = b"z" * (20 << 20)  # in several parts, before the digest is known
    stored = await s3_stack.files.put(f"{BASE}/files/big.bin", content=data)
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == sha(data)
    assert len(keys(s3_stack, "objects/")) == 1
    assert keys(s3_stack, "blobs/") == []
    assert (await s3_stack.files.get(f"{BASE}/files/big.bin")).content == data
    # Known content sent again without a digest is dropped, not stored twice; with its
    # digest it is linked.
    again = await s3_stack.files.put(f"{BASE}/files/again.bin", content=data)
    assert again.json()["sha256"] == sha(data)
    assert len(keys(s3_stack)) == 1
    assert leftovers(s3_stack) == ([], [])
    linked = await s3_stack.files.post(
        f"{BASE}/link", json={"files": [{"path": "third.bin", "sha256": sha(data)}]}
    )
    assert linked.json() == {"linked": ["third.bin"], "missing": []}
    links = await s3_stack.files.post(f"{BASE}/downloads", json={"paths": ["third.bin"]})
    async with httpx.AsyncClient() as s3:
        link = links.json()["files"][0]
        assert link["offset"] == 0
        assert (await s3.get(link["url"])).content == data
