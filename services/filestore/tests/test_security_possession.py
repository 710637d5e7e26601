"""Proof of possession: a digest never stands for bytes the claimant has not shown.

The attack (issue 13, finding 2): a writer of another project, with no access to
``vision``, completes a direct upload of junk under the SHA-256 of one of vision's files,
then reads the file back, by presigned URL and through the file store, hoping for
vision's bytes. Also through the file store's own uploads, links and packs, and in the
other order (a junk claim first, then the real file): vision's file must stay vision's.

Proving one file is no right to its neighbours: a presigned URL binds no byte range, so a
link to a file kept inside vision's pack must never be a URL of that pack.
"""

import hashlib
import io
import logging
import tarfile
import uuid
import zlib
from base64 import b64encode
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from modelcloud.pipe._digests import DigestCache
from modelcloud.pipe._remote import RemoteCenter
from modelcloud_testing.registries import make_service
from modelcloud_testing.servers import fresh_postgres_database
from services.common.migrations import upgrade
from services.filestore.blobs.s3 import readable_whole
from services.filestore.main import MIGRATIONS
from services.filestore.tests.conftest import Stack
from services.filestore.transfers.service import PACK_SHA256

VISION = "/v1/projects/vision/models/classifier/versions/v1"
OTHER = "/v1/projects/other/models/loot/versions/v1"
SECRET = b"vision's private weights " * 400  # 10 kB: one part
JUNK = b"junk " * 2000
CONFIG = b'{"labels": ["cat", "dog"]}'  # public: anyone may hold it


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def crc32(data: bytes) -> str:
    return b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@dataclass
class Client:
    """One caller of the file store: a base path (project, model, version) and a token."""

    stack: Stack
    base: str
    headers: dict[str, str]

    async def get(self, path: str) -> httpx.Response:
        return await self.stack.files.get(f"{self.base}/files/{path}", headers=self.headers)

    async def put(self, path: str, data: bytes, **headers: str) -> httpx.Response:
        return await self.stack.files.put(
            f"{self.base}/files/{path}", content=data, headers={**self.headers, **headers}
        )

    async def post(self, route: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.stack.files.post(f"{self.base}/{route}", headers=headers, **kwargs)

    async def link(self, path: str, sha256: str) -> httpx.Response:
        return await self.post("link", json={"files": [{"path": path, "sha256": sha256}]})

    async def direct_upload(self, path: str, data: bytes, claimed: str) -> httpx.Response:
        """A direct upload of ``data`` (one part, CRC32s right) completed under ``claimed``."""
        started = await self.post("uploads", json={"path": path, "size": len(data)})
        assert started.status_code == 201, started.text
        ticket = started.json()
        signed = await self.post(
            f"uploads/{ticket['upload_id']}/parts",
            json={
                "multipart_id": ticket["multipart_id"],
                "parts": [{"number": 1, "crc32": crc32(data)}],
            },
        )
        assert signed.status_code == 200, signed.text
        async with httpx.AsyncClient() as s3:
            sent = await s3.put(signed.json()["urls"][0], content=data)
        assert sent.status_code == 200, sent.text
        return await self.post(
            f"uploads/{ticket['upload_id']}/complete",
            json={
                "path": path,
                "size": len(data),
                "sha256": claimed,
                "multipart_id": ticket["multipart_id"],
                "parts": [{"etag": sent.headers["etag"], "crc32": crc32(data)}],
            },
        )

    async def links(self, *paths: str) -> list[dict[str, Any]]:
        answer = await self.post("downloads", json={"paths": list(paths)})
        assert answer.status_code == 200, answer.text
        files: list[dict[str, Any]] = answer.json()["files"]
        return files

    async def presigned(self, path: str) -> bytes:
        (link,) = await self.links(path)
        assert link["url"] is not None, link
        headers = {}
        if link["offset"] is not None:
            headers["Range"] = f"bytes={link['offset']}-{link['offset'] + link['size'] - 1}"
        async with httpx.AsyncClient() as s3:
            answer = await s3.get(link["url"], headers=headers)
        assert answer.status_code in (200, 206), answer.text
        return answer.content


def pack(
    files: dict[str, bytes],
    digests: dict[str, str],
    pax: dict[str, dict[str, str]] | None = None,
) -> bytes:
    """A tar pack; ``digests`` and ``pax`` headers by member name, where not the right ones."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            extra = (pax or {}).get(name, {})
            info.pax_headers = {PACK_SHA256: digests.get(name, sha(data)), **extra}
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def owner_and_intruder(stack: Stack) -> tuple[Client, Client]:
    """Vision's admin, and mallory: a writer of project ``other`` with no role in vision."""
    await make_service(stack.registry.client, "other", "loot")
    token = await stack.registry.user_token("mallory")
    member = await stack.registry.client.put(
        "/v1/projects/other/members/mallory", json={"role": "write"}
    )
    assert member.status_code in (200, 201), member.text
    intruder = Client(stack, OTHER, {"Authorization": f"Bearer {token}"})
    assert (await intruder.stack.files.get(f"{VISION}/files", headers=intruder.headers)).is_error
    return Client(stack, VISION, {}), intruder


async def store(owner: Client, how: str, path: str, data: bytes) -> None:
    if how == "direct":
        stored = await owner.direct_upload(path, data, sha(data))
    elif how == "through":
        stored = await owner.put(path, data, **{"X-Content-SHA256": sha(data)})
    else:
        stored = await owner.post(
            "packs", content=pack({path: data}, {}), headers={"Content-Type": "application/x-tar"}
        )
    assert stored.status_code == 201, stored.text


async def whole_objects(links: list[dict[str, Any]]) -> list[bytes]:
    """Every object the links name, read whole: a plain GET, no Range header."""
    found = []
    async with httpx.AsyncClient() as s3:
        for url in {link["url"] for link in links if link["url"] is not None}:
            answer = await s3.get(url)
            assert answer.status_code == 200, answer.text
            found.append(answer.content)
    return found


async def assert_kept_from(intruder: Client, owner: Client, path: str) -> None:
    """The intruder, whose claimed.bin is its junk under the digest of vision's file, never
    reads vision's bytes; vision's file still reads them."""
    assert (await intruder.get("claimed.bin")).content == JUNK
    assert await intruder.presigned("claimed.bin") == JUNK
    # Linking the digest elsewhere in its own project gives it what it uploaded, no more.
    relinked = await intruder.link("again.bin", sha(SECRET))
    assert relinked.json() == {"linked": ["again.bin"], "missing": []}
    assert (await intruder.get("again.bin")).content == JUNK
    assert await intruder.presigned("again.bin") == JUNK
    links = await intruder.links("claimed.bin", "again.bin")
    assert all(SECRET not in whole for whole in await whole_objects(links))
    assert (await owner.get(path)).content == SECRET
    assert await owner.presigned(path) == SECRET


@pytest.mark.s3
@pytest.mark.parametrize("how", ["direct", "through", "pack"])
async def test_a_claimed_digest_does_not_read_another_projects_file(
    s3_stack: Stack, how: str
) -> None:
    owner, intruder = await owner_and_intruder(s3_stack)
    await store(owner, how, "weights.bin", SECRET)

    claimed = await intruder.direct_upload("claimed.bin", JUNK, sha(SECRET))

    # Within its own project the claim stands (its writers may store any bytes), but it
    # points at the junk uploaded, never at vision's copy of the content.
    assert claimed.status_code == 201, claimed.text
    assert (await intruder.get("claimed.bin")).content == JUNK
    assert await intruder.presigned("claimed.bin") == JUNK
    await assert_kept_from(intruder, owner, "weights.bin")
    forbidden = await intruder.stack.files.get(
        f"{VISION}/files/weights.bin", headers=intruder.headers
    )
    assert forbidden.status_code in (403, 404)


@pytest.mark.s3
@pytest.mark.parametrize("how", ["direct", "through", "pack"])
async def test_a_junk_claim_made_first_does_not_replace_the_real_file(
    s3_stack: Stack, how: str
) -> None:
    owner, intruder = await owner_and_intruder(s3_stack)
    claimed = await intruder.direct_upload("claimed.bin", JUNK, sha(SECRET))
    assert claimed.status_code == 201, claimed.text

    await store(owner, how, "weights.bin", SECRET)

    assert (await owner.get("weights.bin")).content == SECRET
    assert await owner.presigned("weights.bin") == SECRET
    assert (await intruder.get("claimed.bin")).content == JUNK


@pytest.mark.s3
async def test_a_file_proven_from_another_projects_pack_gets_no_url_of_the_pack(
    s3_stack: Stack,
) -> None:
    owner, intruder = await owner_and_intruder(s3_stack)
    files = {"config.json": CONFIG, "weights.bin": SECRET}
    packed = await owner.post(
        "packs", content=pack(files, {}), headers={"Content-Type": "application/x-tar"}
    )
    assert packed.status_code == 201, packed.text

    # The intruder holds the public file and proves it: it sends the bytes.
    proven = await intruder.put("config.json", CONFIG, **{"X-Content-SHA256": sha(CONFIG)})
    assert proven.status_code == 201, proven.text

    # Its bytes lie only in vision's pack: no URL, the file store reads the range itself.
    (link,) = await intruder.links("config.json")
    assert (link["url"], link["offset"], link["sha256"]) == (None, None, sha(CONFIG))
    assert (await intruder.get("config.json")).content == CONFIG
    # A pack of its own holding the same file: its links name that pack, never vision's.
    mine = await intruder.post(
        "packs",
        content=pack({"copy.json": CONFIG}, {}),
        headers={"Content-Type": "application/x-tar"},
    )
    assert mine.status_code == 201, mine.text
    links = await intruder.links("config.json", "copy.json")
    assert [link["url"] is not None for link in links] == [True, True]
    assert await intruder.presigned("config.json") == CONFIG
    wholes = await whole_objects(links)
    assert len(wholes) == 1
    assert CONFIG in wholes[0]
    assert SECRET not in wholes[0]

    # Vision reads its own pack through links, which may be the whole pack: its bytes.
    assert await owner.presigned("config.json") == CONFIG
    assert await owner.presigned("weights.bin") == SECRET
    assert [SECRET in whole for whole in await whole_objects(await owner.links("weights.bin"))] == [
        True
    ]


@pytest.mark.s3
async def test_an_object_that_holds_the_content_alone_is_linked_whole(s3_stack: Stack) -> None:
    owner, intruder = await owner_and_intruder(s3_stack)
    # The digest comes last: the bytes stream into an object of their own, and stay there.
    trailer = b'{"sha256": "%s"}' % sha(CONFIG).encode()
    sent = await owner.put("config.json", CONFIG + trailer, **{"X-File-Size": str(len(CONFIG))})
    assert sent.status_code == 201, sent.text
    proven = await intruder.put("config.json", CONFIG, **{"X-Content-SHA256": sha(CONFIG)})
    assert proven.status_code == 201, proven.text

    (link,) = await intruder.links("config.json")
    assert link["url"] is not None
    assert link["offset"] == 0
    assert await whole_objects([link]) == [CONFIG]  # the URL covers that file and nothing else


def test_the_sdk_reads_a_file_without_a_url_through_the_file_store(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append((request.method, request.url.path))
        if request.url.path == "/v1/transfers":
            return httpx.Response(200, json={"direct_downloads": True})
        if request.url.path.endswith("/downloads"):
            link = {"path": "config.json", "url": None, "offset": None}
            return httpx.Response(
                200,
                json={
                    "files": [{**link, "size": len(CONFIG), "sha256": sha(CONFIG)}],
                    "expires_at": "2026-12-02T15:00:00Z",
                },
            )
        return httpx.Response(200, content=CONFIG, headers={"x-content-sha256": sha(CONFIG)})

    center = RemoteCenter(
        "http://filestore",
        None,
        "other",
        "loot",
        "v1",
        transport=httpx.MockTransport(answer),
        digests=DigestCache(tmp_path / "digests.sqlite"),
    )
    try:
        center.fetch([("config.json", tmp_path / "config.json")], None)
    finally:
        center.close()

    assert (tmp_path / "config.json").read_bytes() == CONFIG
    assert asked == [
        ("GET", "/v1/transfers"),
        ("POST", f"{OTHER}/downloads"),
        ("GET", f"{OTHER}/files/config.json"),
    ]


@pytest.mark.parametrize(
    ("key", "offset", "project", "whole"),
    [
        ("packs/vision/4f2c", 512, "vision", True),  # vision's own pack
        ("packs/vision/4f2c", 512, "other", False),  # its other files are vision's
        ("packs/vision_2/4f2c", 512, "vision", False),
        ("packs/4f2c", 512, "vision", False),  # a pack from before packs had a project
        ("objects/4f2c", 0, "other", True),  # a through upload: the content alone
        ("objects/4f2c", 7, "other", False),
        ("objects/vision/4f2c", 0, "vision", True),  # vision's own direct upload
        ("objects/vision/4f2c", 0, "other", False),
        ("blobs/ab/ab12", 0, "other", False),  # not a placement's object
    ],
)
def test_only_objects_a_project_may_read_whole_are_presigned(
    key: str, offset: int, project: str, whole: bool
) -> None:
    assert readable_whole(key, offset, project) is whole


async def test_the_file_stores_own_uploads_and_links_need_the_bytes(stack: Stack) -> None:
    owner, intruder = await owner_and_intruder(stack)
    await store(owner, "through", "weights.bin", SECRET)
    digest = sha(SECRET)

    linked = await intruder.link("claimed.bin", digest)
    assert linked.json() == {"linked": [], "missing": ["claimed.bin"]}
    declared = await intruder.put("claimed.bin", JUNK, **{"X-Content-SHA256": digest})
    assert declared.status_code == 422
    assert declared.json()["errors"][0]["field"] == "X-Content-SHA256"
    trailer = JUNK + b'{"sha256": "%s"}' % digest.encode()
    trailed = await intruder.put("claimed.bin", trailer, **{"X-File-Size": str(len(JUNK))})
    assert trailed.status_code == 422
    assert trailed.json()["errors"][0]["field"] == "trailer.sha256"
    packed = await intruder.post(
        "packs",
        content=pack({"claimed.bin": JUNK}, {"claimed.bin": digest}),
        headers={"Content-Type": "application/x-tar"},
    )
    assert packed.status_code == 422
    assert packed.json()["errors"][0]["field"] == f"pack[0].{PACK_SHA256}"

    assert (await intruder.get("claimed.bin")).status_code == 404
    assert (await intruder.link("claimed.bin", digest)).json()["missing"] == ["claimed.bin"]
    assert (await owner.get("weights.bin")).content == SECRET
    # Sending the bytes themselves is proof: the same content, stored once, reads back.
    proven = await intruder.put("copy.bin", SECRET, **{"X-Content-SHA256": digest})
    assert proven.status_code == 201, proven.text
    assert (await intruder.get("copy.bin")).content == SECRET
    assert (await intruder.link("claimed.bin", digest)).json()["linked"] == ["claimed.bin"]


@pytest.mark.parametrize("mtime", ["1e300", "-1e300", "nan", "inf", "-inf", "1e12", "-1e11"])
async def test_a_pack_member_with_an_impossible_time_is_a_422(stack: Stack, mtime: str) -> None:
    body = pack({"ok.bin": b"fine", "odd.bin": b"odd"}, {}, {"odd.bin": {"mtime": mtime}})
    answer = await stack.files.post(
        f"{VISION}/packs", content=body, headers={"Content-Type": "application/x-tar"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    errors = answer.json()["errors"]
    assert [e["field"] for e in errors] == ["pack[1].mtime"]
    assert "odd.bin" in errors[0]["message"]
    assert (await stack.files.get(f"{VISION}/files")).json() == []


_ENTRY = sa.table(
    "file_entry",
    *(sa.column(name, sa.String()) for name in ("project", "model", "version", "path")),
    sa.column("id", sa.Uuid()),
    sa.column("sha256", sa.String()),
    sa.column("size", sa.BigInteger()),
    sa.column("modified_at", sa.DateTime(timezone=True)),
    sa.column("uploaded_by", sa.String()),
    sa.column("uploaded_at", sa.DateTime(timezone=True)),
    sa.column("object_key", sa.String()),
)
_PLACEMENT = sa.table(
    "blob_placement",
    sa.column("sha256", sa.String()),
    sa.column("key", sa.String()),
    sa.column("offset", sa.BigInteger()),
    sa.column("size", sa.BigInteger()),
)


async def _migrate_from_0003(url: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """Rows as 0003 left them after a cross-project claim, brought to the head."""
    engine = create_async_engine(url)
    digest, packed = sha(SECRET), sha(b"packed")
    direct = f"objects/vision/{uuid.uuid4()}"
    now = datetime.now(UTC)
    caplog.set_level(logging.WARNING, logger="modelcloud.filestore.migrations")
    try:
        await upgrade(engine, MIGRATIONS, "0003")
        async with engine.begin() as db:
            await db.execute(
                sa.insert(_ENTRY),
                [
                    {
                        "id": uuid.uuid4(),
                        "project": project,
                        "model": "m",
                        "version": "v1",
                        "path": path,
                        "sha256": content,
                        "size": 10,
                        "modified_at": now,
                        "uploaded_by": "ada",
                        "uploaded_at": now - timedelta(hours=hours),
                    }
                    for project, path, content, hours in [
                        ("vision", "weights.bin", digest, 3),
                        ("other", "claimed.bin", digest, 2),  # read vision's upload by digest
                        ("other", "packed.bin", packed, 2),
                        ("vision_2", "near.bin", digest, 1),  # "_" is no wildcard here
                    ]
                ],
            )
            await db.execute(
                sa.insert(_PLACEMENT),
                [
                    {"sha256": digest, "key": direct, "offset": 0, "size": 10},
                    {"sha256": packed, "key": "packs/p", "offset": 5, "size": 10},
                ],
            )
        await upgrade(engine, MIGRATIONS)
        async with engine.connect() as db:
            query = sa.select(_ENTRY.c.path, _ENTRY.c.object_key)
            entries = dict((await db.execute(query)).all())
            query = sa.select(_PLACEMENT.c.sha256, _PLACEMENT.c.key)
            placed = [tuple(row) for row in (await db.execute(query)).all()]
    finally:
        await engine.dispose()
    audited = [
        (r.sha256, r.project, r.entries, r.first)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "modelcloud.filestore.migrations"
    ]
    return {
        "entries": entries,
        "placements": placed,
        "direct": direct,
        "packed": packed,
        "audited": audited,
        "digest": digest,
    }


def _check_migrated(found: dict[str, Any]) -> None:
    assert found["entries"] == {
        "weights.bin": found["direct"],  # vision's own upload stays its file
        "claimed.bin": None,  # other's claim no longer reaches it
        "packed.bin": None,
        "near.bin": None,
    }
    assert found["placements"] == [(found["packed"], "packs/p")]
    # Entries of later projects that may still read an earlier project's bytes are named for
    # an audit; vision's own upload and other's own pack are not.
    assert found["audited"] == [
        (found["digest"], "other", 1, "vision"),
        (found["digest"], "vision_2", 1, "other"),
    ]


async def test_migration_0004_gives_direct_uploads_to_their_project(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'files.db'}"
    _check_migrated(await _migrate_from_0003(database, caplog))


@pytest.mark.postgres
async def test_migration_0004_on_postgres(caplog: pytest.LogCaptureFixture) -> None:
    async with fresh_postgres_database() as database:
        _check_migrated(await _migrate_from_0003(database, caplog))
