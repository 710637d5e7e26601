"""The file store's API: content-addressed uploads checked by SHA-256, downloads, pushes of
unchanged files that send nothing, refused names, and project roles from the registry."""

import hashlib
import json
from typing import Any

import httpx
import pytest

from services.filestore.tests.conftest import Stack

BASE = "/v1/projects/vision/models/classifier/versions/v1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(client: httpx.AsyncClient, path: str, data: bytes, **headers: str) -> httpx.Response:
    return await client.put(
        f"{BASE}/files/{path}", content=data, headers={"X-Content-SHA256": sha(data), **headers}
    )


def blob_count(stack: Stack) -> int:
    return sum(1 for p in (stack.settings.data_dir / "blobs").rglob("*") if p.is_file())


async def roundtrip(stack: Stack) -> None:
    data = bytes(range(256)) * 5000
    stored = await put(stack.files, "weights/model.pth", data)
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == sha(data)
    assert stored.json()["uploaded_by"].startswith("admin-")
    download = await stack.files.get(f"{BASE}/files/weights/model.pth")
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["x-content-sha256"] == sha(data)
    listed = (await stack.files.get(f"{BASE}/files")).json()
    assert [(f["path"], f["size"]) for f in listed] == [("weights/model.pth", len(data))]
    assert (await stack.files.get("/v1/projects/vision/models")).json() == ["classifier"]
    versions = await stack.files.get("/v1/projects/vision/models/classifier/versions")
    assert versions.json() == ["v1"]


async def test_upload_and_download_on_the_local_store(stack: Stack) -> None:
    await roundtrip(stack)


@pytest.mark.s3
async def test_upload_and_download_on_s3(s3_stack: Stack) -> None:
    await roundtrip(s3_stack)


async def test_identical_content_is_stored_once_and_unchanged_pushes_send_nothing(
    stack: Stack,
) -> None:
    same = b"shared weights" * 100
    await put(stack.files, "a.bin", same)
    await put(stack.files, "copy/a.bin", same)
    assert blob_count(stack) == 1

    fresh = b"new"
    linked = await stack.files.post(
        f"{BASE}/link",
        json={
            "files": [
                {"path": "a.bin", "sha256": sha(same)},
                {"path": "third/a.bin", "sha256": sha(same)},
                {"path": "new.bin", "sha256": sha(fresh)},
            ]
        },
    )
    assert linked.json() == {"linked": ["a.bin", "third/a.bin"], "missing": ["new.bin"]}
    other_version = "/v1/projects/vision/models/classifier/versions/v2"
    relinked = await stack.files.post(
        f"{other_version}/link", json={"files": [{"path": "a.bin", "sha256": sha(same)}]}
    )
    assert relinked.json()["linked"] == ["a.bin"]
    assert (await stack.files.get(f"{other_version}/files/a.bin")).content == same


async def test_a_wrong_or_truncated_upload_commits_nothing(stack: Stack) -> None:
    data = b"x" * 10_000
    wrong = await stack.files.put(
        f"{BASE}/files/m.bin", content=data, headers={"X-Content-SHA256": sha(b"other")}
    )
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["field"] == "X-Content-SHA256"
    truncated = await stack.files.put(
        f"{BASE}/files/m.bin", content=data[:5000], headers={"X-Content-SHA256": sha(data)}
    )
    assert truncated.status_code == 422
    assert (await stack.files.get(f"{BASE}/files")).json() == []
    assert blob_count(stack) == 0
    assert not any((stack.settings.data_dir / "uploads").iterdir())


async def test_an_upload_without_a_digest_is_kept_under_the_one_computed(stack: Stack) -> None:
    data = b"y" * 10_000
    # A truncated body is refused all the same (its length was declared).
    truncated = await stack.files.put(
        f"{BASE}/files/m.bin", content=data[:5000], headers={"Content-Length": "10000"}
    )
    assert truncated.status_code in (400, 422)
    assert blob_count(stack) == 0
    stored = await stack.files.put(f"{BASE}/files/m.bin", content=data)
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == sha(data)
    assert (await stack.files.get(f"{BASE}/files/m.bin")).content == data
    # The same content again, still without a digest: stored once.
    again = await stack.files.put(f"{BASE}/files/copy.bin", content=data)
    assert again.json()["sha256"] == sha(data)
    assert blob_count(stack) == 1


@pytest.mark.parametrize(
    "raw_path",
    [
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e%2fetc%2fpasswd",
        "%252e%252e%252fetc%252fpasswd",
        "a%5c..%5cb",
        "%2fetc%2fpasswd",
        "model%00.pth",
        "a//b",
    ],
)
async def test_unsafe_names_are_refused_and_touch_nothing(stack: Stack, raw_path: str) -> None:
    url = httpx.URL(f"http://filestore{BASE}/files/").copy_with(
        raw_path=f"{BASE}/files/{raw_path}".encode()
    )
    response = await stack.files.put(url, content=b"x", headers={"X-Content-SHA256": sha(b"x")})
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert blob_count(stack) == 0


async def test_roles_come_from_the_registry(stack: Stack) -> None:
    await put(stack.files, "model.pth", b"w")
    token = await stack.registry.user_token("eve")
    eve = {"Authorization": f"Bearer {token}"}
    for method, path in [("GET", f"{BASE}/files"), ("DELETE", f"{BASE}/files/model.pth")]:
        response = await stack.files.request(method, path, headers=eve)
        assert response.status_code == 404  # another project's files do not exist for eve
    await stack.registry.client.put("/v1/projects/vision/members/eve", json={"role": "read"})
    assert (await stack.files.get(f"{BASE}/files/model.pth", headers=eve)).content == b"w"
    denied = await stack.files.delete(f"{BASE}/files/model.pth", headers=eve)
    assert denied.status_code == 403
    anonymous = await stack.files.get(f"{BASE}/files", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    bogus = await stack.files.get(f"{BASE}/files", headers={"Authorization": "Bearer mc_x"})
    assert bogus.status_code == 401


async def test_delete(stack: Stack) -> None:
    await put(stack.files, "a.bin", b"a")
    deleted: dict[str, Any] = (await stack.files.delete(f"{BASE}/files/a.bin")).json()
    assert deleted["path"] == "a.bin"
    assert (await stack.files.get(f"{BASE}/files/a.bin")).status_code == 404
    assert (await stack.files.delete(f"{BASE}/files/a.bin")).status_code == 404


@pytest.mark.s3
async def test_a_file_over_the_multipart_threshold_goes_up_and_down_on_s3(
    s3_stack: Stack,
) -> None:
    data = hashlib.sha256(b"seed").digest() * ((65 << 20) // 32 + 1)  # just over 64 MiB

    async def body():  # streamed: the client never holds a second copy
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    stored = await s3_stack.files.put(
        f"{BASE}/files/big.bin",
        content=body(),
        headers={"X-Content-SHA256": sha(data), "Content-Length": str(len(data))},
    )
    assert stored.status_code == 201, stored.text
    digest = hashlib.sha256()
    async with s3_stack.files.stream("GET", f"{BASE}/files/big.bin") as response:
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == sha(data)


async def test_a_digest_alone_links_only_within_the_project(stack: Stack) -> None:
    # Knowing the digest of another project's file must not be enough to read it.
    secret = b"another team's weights"
    stored = await stack.files.put(
        f"{BASE}/files/w.bin", content=secret, headers={"X-Content-SHA256": sha(secret)}
    )
    assert stored.status_code == 201
    created = await stack.registry.client.post("/v1/projects", json={"name": "other"})
    assert created.status_code == 201, created.text
    other = "/v1/projects/other/models/m/versions/v1"
    item = {"path": "w.bin", "sha256": sha(secret)}
    linked = await stack.files.post(f"{other}/link", json={"files": [item]})
    assert linked.json() == {"linked": [], "missing": ["w.bin"]}
    assert (await stack.files.get(f"{other}/files/w.bin")).status_code == 404
    # With the bytes, it is stored (once: the content is the same).
    again = await stack.files.put(
        f"{other}/files/w.bin", content=secret, headers={"X-Content-SHA256": sha(secret)}
    )
    assert again.status_code == 201
    assert blob_count(stack) == 1


async def test_a_path_named_twice_in_one_link_is_linked_once(stack: Stack) -> None:
    first, second = b"first", b"second"
    for name, data in (("one.bin", first), ("two.bin", second)):
        put = await stack.files.put(
            f"{BASE}/files/{name}", content=data, headers={"X-Content-SHA256": sha(data)}
        )
        assert put.status_code == 201
    items = [{"path": "x.bin", "sha256": sha(first)}, {"path": "x.bin", "sha256": sha(second)}]
    linked = await stack.files.post(f"{BASE}/link", json={"files": items})
    assert linked.status_code == 200, linked.text
    assert (await stack.files.get(f"{BASE}/files/x.bin")).content == second


def with_trailer(data: bytes, *, sha256: str | None = None) -> bytes:
    return data + json.dumps({"sha256": sha256 or sha(data)}).encode()


async def test_digests_after_the_bytes_are_checked_before_anything_is_kept(stack: Stack) -> None:
    data = b"w" * 50_000
    url = f"{BASE}/files/w.bin"
    size = {"X-File-Size": str(len(data))}
    wrong = await stack.files.put(url, content=with_trailer(data, sha256=sha(b"x")), headers=size)
    assert wrong.status_code == 422
    assert wrong.json()["errors"][0]["field"] == "trailer.sha256"
    for body, field in [
        (data + b"not json", "trailer"),
        (data + b'{"sha": "' + sha(data).encode() + b'"}', "trailer.sha256"),
        (data + b" " * 2000, "body"),
    ]:
        refused = await stack.files.put(url, content=body, headers=size)
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == field
    short = await stack.files.put(url, content=data[:100], headers=size)
    assert short.status_code == 422
    both = await stack.files.put(
        url, content=with_trailer(data), headers={**size, "X-Content-SHA256": sha(data)}
    )
    assert both.status_code == 422
    assert (await stack.files.get(f"{BASE}/files")).json() == []
    assert blob_count(stack) == 0

    stored = await stack.files.put(url, content=with_trailer(data), headers=size)
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == sha(data)
    assert (await stack.files.get(url)).content == data
