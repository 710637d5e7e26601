"""Downloads in byte ranges: a pull cut half way asks for the rest, from any store and
any placement (content address, a pack, an object of its own)."""

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import httpx
import pytest

from modelcloud.pipe._digests import DigestCache
from modelcloud.pipe._remote import RemoteCenter
from modelcloud.pipe._retries import Retries
from services.filestore.tests.conftest import Stack
from services.filestore.tests.test_transfers import pack, send_pack

BASE = "/v1/projects/vision/models/classifier/versions/v1"
DATA = bytes(range(256)) * 40  # 10,240 bytes


async def ranges_are_served(stack: Stack) -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    stored = await stack.files.put(
        f"{BASE}/files/a.bin", content=DATA, headers={"X-Content-SHA256": digest}
    )
    assert stored.status_code == 201
    placed = await stack.files.put(f"{BASE}/files/b.bin", content=DATA[::-1])  # digest last
    assert placed.status_code == 201
    assert (await send_pack(stack, pack({"c.bin": DATA, "d.bin": b"x" * 99}))).status_code == 201
    for path, data in (("a.bin", DATA), ("b.bin", DATA[::-1]), ("c.bin", DATA)):
        whole = await stack.files.get(f"{BASE}/files/{path}")
        assert whole.status_code == 200
        assert whole.headers["accept-ranges"] == "bytes"
        for header, first, last in (
            ("bytes=4000-", 4000, len(data) - 1),
            ("bytes=10-19", 10, 19),
            ("bytes=-100", len(data) - 100, len(data) - 1),
            ("bytes=10000-99999", 10000, len(data) - 1),
        ):
            part = await stack.files.get(f"{BASE}/files/{path}", headers={"Range": header})
            assert part.status_code == 206, (path, header, part.text)
            assert part.content == data[first : last + 1]
            assert part.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
            assert part.headers["x-content-sha256"] == whole.headers["x-content-sha256"]
    # Ranges this server does not serve are ignored (the whole file), past the end is a 416.
    for ignored in ("bytes=0-1,5-6", "lines=1-2", "bytes=9-2", "bytes=abc"):
        answer = await stack.files.get(f"{BASE}/files/a.bin", headers={"Range": ignored})
        assert (answer.status_code, answer.content) == (200, DATA)
    beyond = await stack.files.get(f"{BASE}/files/a.bin", headers={"Range": "bytes=20000-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-type"] == "application/problem+json"


async def test_ranges_on_the_local_store(stack: Stack) -> None:
    await ranges_are_served(stack)


@pytest.mark.s3
async def test_ranges_on_s3(s3_stack: Stack) -> None:
    await ranges_are_served(s3_stack)


class CutOnce(httpx.SyncByteStream):
    """A body that breaks off half way, as a dropped connection does."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    def __iter__(self) -> Iterator[bytes]:
        yield self.content[: len(self.content) // 2]
        raise httpx.ReadError("connection reset by peer")


class Network(httpx.BaseTransport):
    """The SDK's (synchronous) requests, carried to the file store app on the test's event
    loop; the first download of a file is cut half way."""

    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.files = stack.files
        self.loop = loop
        self.cut = True
        self.downloads: list[tuple[str | None, int, int]] = []  # range, status, bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        answer = asyncio.run_coroutine_threadsafe(
            self.files.request(
                request.method, request.url.path, headers=request.headers, content=body
            ),
            self.loop,
        ).result()
        headers = {k: v for k, v in answer.headers.items() if k != "content-encoding"}
        if request.method == "GET" and "/files/" in request.url.path:
            self.downloads.append(
                (request.headers.get("range"), answer.status_code, len(answer.content))
            )
            if self.cut:
                self.cut = False
                return httpx.Response(
                    answer.status_code, headers=headers, stream=CutOnce(answer.content)
                )
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


async def test_the_pipe_resumes_a_pull_cut_half_way_with_a_range(
    stack: Stack, tmp_path: Path
) -> None:
    data = bytes(range(256)) * (12 << 10)  # 3 MiB
    stored = await stack.files.put(
        f"{BASE}/files/model.bin",
        content=data,
        headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest()},
    )
    assert stored.status_code == 201
    network = Network(stack, asyncio.get_running_loop())
    center = RemoteCenter(
        "http://filestore",
        None,
        "vision",
        "classifier",
        "v1",
        transport=network,
        digests=DigestCache(tmp_path / "digests.sqlite"),
        retries=Retries(first_delay_s=0),
    )
    try:
        target = tmp_path / "model.bin"
        await anyio.to_thread.run_sync(center.fetch, [("model.bin", target)], None)
    finally:
        center.close()

    assert target.read_bytes() == data
    (first, resumed) = network.downloads
    assert first == (None, 200, len(data))
    asked, status, sent = resumed
    start = int(str(asked).removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= len(data) // 2  # from what had arrived (whole chunks of it)
    assert (status, sent) == (206, len(data) - start)  # the rest, not the whole again
