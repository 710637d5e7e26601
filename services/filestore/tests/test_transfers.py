"""Presigned direct transfers (S3) and upload packs: bytes that skip the file store are
still checked by it, a bad upload or pack stores nothing and leaves no parts behind."""

import base64
import hashlib
import io
import tarfile
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.filestore.tests.conftest import Stack, _stack, bucket_client, s3_settings
from services.filestore.transfers.service import PACK_SHA256, new_upload_id

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


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


async def direct_upload(
    stack: Stack,
    data: bytes,
    *,
    signed: bytes | None = None,
    size: int | None = None,
    path: str = "big.bin",
    completions: int = 1,
) -> httpx.Response:
    """Start, sign each part with its CRC32, PUT it straight to S3, complete: as the pipe
    does. ``signed``: the bytes whose CRC32s are signed and declared, if not ``data``;
    ``completions``: how often the completion is sent (its last answer is returned)."""
    declared = signed if signed is not None else data
    size = len(declared) if size is None else size
    started = await stack.files.post(f"{BASE}/uploads", json={"path": path, "size": size})
    assert started.status_code == 201, started.text
    ticket: dict[str, Any] = started.json()
    part_size, multipart_id = ticket["part_size"], ticket["multipart_id"]
    parts = []
    async with httpx.AsyncClient() as s3:
        for number in range(1, ticket["parts"] + 1):
            window = slice((number - 1) * part_size, number * part_size)
            part, crc = data[window], crc32(declared[window])
            urls = await stack.files.post(
                f"{BASE}/uploads/{ticket['upload_id']}/parts",
                json={"multipart_id": multipart_id, "parts": [{"number": number, "crc32": crc}]},
            )
            assert urls.status_code == 200, urls.text
            answer = await s3.put(urls.json()["urls"][0], content=part)
            assert answer.status_code == 200, answer.text
            parts.append({"etag": answer.headers["etag"], "crc32": crc})
    for _ in range(completions):
        completed = await stack.files.post(
            f"{BASE}/uploads/{ticket['upload_id']}/complete",
            json={
                "path": path,
                "size": size,
                "sha256": sha(declared),
                "multipart_id": multipart_id,
                "parts": parts,
            },
        )
    return completed


def leftovers(stack: Stack) -> tuple[list[str], list[str]]:
    """Objects of direct uploads, and unfinished multipart uploads, in the bucket."""
    client = bucket_client(stack)
    bucket = stack.settings.s3_bucket
    uploaded = client.list_objects_v2(Bucket=bucket, Prefix="objects/").get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [o["Key"] for o in uploaded], [u["Key"] for u in uploads]


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
    started = await stack.files.post(f"{BASE}/uploads", json={"path": "a.bin", "size": 1})
    assert started.status_code == 409
    assert started.headers["content-type"] == "application/problem+json"


@pytest.mark.s3
async def test_direct_uploads_can_be_turned_off(tmp_path: Path, s3_endpoint: str) -> None:
    settings = s3_settings(tmp_path, s3_endpoint)
    async for stack in _stack(tmp_path, direct_uploads=False, **settings):
        limits = (await stack.files.get("/v1/transfers")).json()
        assert (limits["direct_uploads"], limits["direct_downloads"]) == (False, True)
        started = await stack.files.post(f"{BASE}/uploads", json={"path": "a.bin", "size": 1})
        assert started.status_code == 409


@pytest.mark.s3
@pytest.mark.parametrize("size", [1000, (11 << 20) + 7], ids=["one part", "three parts"])
async def test_a_direct_upload_is_checked_and_then_served(s3_stack: Stack, size: int) -> None:
    stack = s3_stack
    data = (hashlib.sha256(b"weights").digest() * (size // 32 + 1))[:size]
    completed = await direct_upload(stack, data)
    assert completed.status_code == 201, completed.text
    assert completed.json()["sha256"] == sha(data)
    (kept,), unfinished = leftovers(stack)  # one object, no parts left
    assert kept.startswith("objects/vision/")
    assert unfinished == []
    links = await stack.files.post(f"{BASE}/downloads", json={"paths": ["big.bin"]})
    assert links.status_code == 200, links.text
    (link,) = links.json()["files"]
    assert (link["size"], link["sha256"]) == (size, sha(data))
    async with httpx.AsyncClient() as s3:
        assert (await s3.get(link["url"])).content == data
    assert (await stack.files.get(f"{BASE}/files/big.bin")).content == data


@pytest.mark.s3
async def test_content_sent_direct_twice_is_kept_once_and_links(s3_stack: Stack) -> None:
    data = b"twice" * 3000
    assert (await direct_upload(s3_stack, data)).status_code == 201
    again = await direct_upload(s3_stack, data, path="copy.bin")
    assert again.status_code == 201, again.text
    kept, unfinished = leftovers(s3_stack)
    assert (len(kept), unfinished) == (1, [])  # the second object was dropped
    linked = await s3_stack.files.post(
        f"{BASE}/link", json={"files": [{"path": "third.bin", "sha256": sha(data)}]}
    )
    assert linked.json() == {"linked": ["third.bin"], "missing": []}
    assert (await s3_stack.files.get(f"{BASE}/files/third.bin")).content == data


@pytest.mark.s3
@pytest.mark.parametrize("size", [1000, (11 << 20) + 7], ids=["one part", "three parts"])
async def test_bytes_other_than_the_signed_ones_keep_nothing(s3_stack: Stack, size: int) -> None:
    # S3 itself refuses a part whose CRC32 differs from the signed one (AWS, MinIO); moto
    # takes it, and the file store's check of the CRC32s S3 computed catches it.
    data = b"w" * size
    sent = data[:-1] + b"v"  # one byte differs, in the last part
    wrong = await direct_upload(s3_stack, sent, signed=data)
    assert wrong.status_code == 422, wrong.text
    assert wrong.headers["content-type"] == "application/problem+json"
    assert wrong.json()["errors"][0]["field"] == "parts"
    assert await listed(s3_stack) == []
    assert leftovers(s3_stack) == ([], [])
    links = await s3_stack.files.post(f"{BASE}/downloads", json={"paths": ["big.bin"]})
    assert links.status_code == 404


@pytest.mark.s3
async def test_a_truncated_direct_upload_keeps_nothing(s3_stack: Stack) -> None:
    truncated = await direct_upload(s3_stack, b"w" * 600, size=1000)
    assert truncated.status_code == 422
    assert truncated.json()["errors"][0]["field"] == "size"
    assert await listed(s3_stack) == []
    assert leftovers(s3_stack) == ([], [])


@pytest.mark.s3
async def test_completing_an_upload_that_never_happened_is_a_clear_422(s3_stack: Stack) -> None:
    answer = await s3_stack.files.post(
        f"{BASE}/uploads/{new_upload_id()}/complete",
        json={
            "path": "big.bin",
            "size": 1,
            "sha256": sha(b"x"),
            "multipart_id": "made-up",
            "parts": [{"etag": '"0"', "crc32": crc32(b"x")}],
        },
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "upload_id"


@pytest.mark.s3
async def test_a_completion_sent_again_after_it_succeeded_answers_the_same(
    s3_stack: Stack,
) -> None:
    """The pipe sends a completion again when it was turned away (503) or its answer lost;
    if the first one did complete, the second must not fail the push."""
    data = b"completed once" * 1000
    again = await direct_upload(s3_stack, data, completions=2)
    assert again.status_code == 201, again.text
    assert again.json()["sha256"] == sha(data)
    assert await listed(s3_stack) == ["big.bin"]
    assert (await s3_stack.files.get(f"{BASE}/files/big.bin")).content == data
    kept, unfinished = leftovers(s3_stack)
    assert (len(kept), unfinished) == (1, [])


@pytest.mark.s3
async def test_completing_an_upload_id_this_store_never_issued_is_gone(s3_stack: Stack) -> None:
    answer = await s3_stack.files.post(
        f"{BASE}/uploads/8a6e0804-2bd0-4672-b79a-d97358d97cd4/complete",
        json={
            "path": "big.bin",
            "size": 1,
            "sha256": sha(b"x"),
            "multipart_id": "made-up",
            "parts": [{"etag": '"0"', "crc32": crc32(b"x")}],
        },
    )
    assert answer.status_code == 410
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.s3
@pytest.mark.parametrize(
    ("start", "field"),
    [({"path": "a.bin", "size": 0}, "size"), ({"path": "../a.bin", "size": 10}, "path")],
)
async def test_a_direct_upload_that_cannot_be_is_refused_at_the_start(
    s3_stack: Stack, start: dict[str, Any], field: str
) -> None:
    answer = await s3_stack.files.post(f"{BASE}/uploads", json=start)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["field"] == field
    assert leftovers(s3_stack) == ([], [])


@pytest.mark.s3
async def test_part_checksums_are_validated(s3_stack: Stack) -> None:
    started = await s3_stack.files.post(f"{BASE}/uploads", json={"path": "a.bin", "size": 10})
    ticket = started.json()
    answer = await s3_stack.files.post(
        f"{BASE}/uploads/{ticket['upload_id']}/parts",
        json={"multipart_id": ticket["multipart_id"], "parts": [{"number": 1, "crc32": "nope"}]},
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["field"] == "parts.0.crc32"


@pytest.mark.s3
async def test_an_aborted_direct_upload_leaves_no_parts(s3_stack: Stack) -> None:
    stack = s3_stack
    size = 11 << 20
    started = await stack.files.post(f"{BASE}/uploads", json={"path": "big.bin", "size": size})
    ticket = started.json()
    assert ticket["parts"] == 3
    part = b"z" * (5 << 20)
    signed = await stack.files.post(
        f"{BASE}/uploads/{ticket['upload_id']}/parts",
        json={
            "multipart_id": ticket["multipart_id"],
            "parts": [{"number": 1, "crc32": crc32(part)}],
        },
    )
    async with httpx.AsyncClient() as s3:
        assert (await s3.put(signed.json()["urls"][0], content=part)).status_code == 200
    assert leftovers(stack)[1] != []
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
    assert leftovers(s3_stack)[1] == []  # no unfinished multipart upload
    linked = await s3_stack.files.post(
        f"{BASE}/link", json={"files": [{"path": "third.bin", "sha256": sha(data)}]}
    )
    assert linked.json() == {"linked": ["third.bin"], "missing": []}
    links = await s3_stack.files.post(f"{BASE}/downloads", json={"paths": ["third.bin"]})
    async with httpx.AsyncClient() as s3:
        link = links.json()["files"][0]
        assert link["offset"] == 0
        assert (await s3.get(link["url"])).content == data
