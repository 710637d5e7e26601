"""Transfers cut half way: a pull goes on from the byte where it stopped (HTTP ``Range``)
and is checked against its SHA-256 at the end; a push is sent again (a direct upload: only
the part that was cut); 5xx and 429 are retried, a 4xx never is.

The file store here is a small HTTP server of the test's own, which cuts the connection
half way through a body once, and counts the bytes it sends."""

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelcloud.pipe import FilePipe, PipeError
from modelcloud.pipe._digests import DigestCache
from modelcloud.pipe._remote import RemoteCenter
from modelcloud.pipe._retries import Retries, resumed

BASE = "/v1/projects/vision/models/m/versions/1"
PART = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@dataclass
class Store:
    """The fake file store's state and what the test asks of it."""

    files: dict[str, bytes] = field(default_factory=dict)
    direct: bool = False  # presigned transfers, from this same server
    cut_downloads: int = 0  # this many file bodies are cut half way
    cut_uploads: int = 0
    cut_part: int | None = None  # the direct upload part cut once
    cut_starts: int = 0  # direct upload starts whose answer is lost (the upload is made)
    fail_starts: list[int] = field(default_factory=list)  # statuses answered first
    starts: int = 0  # multipart uploads made
    fail_uploads: list[int] = field(default_factory=list)  # statuses answered first
    body_bytes_sent: int = 0
    ranges: list[str | None] = field(default_factory=list)
    upload_requests: int = 0
    part_puts: list[int] = field(default_factory=list)
    parts: dict[int, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def handler_for(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, status: int, body: object = None, **headers: str) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(data)

        def cut(self) -> None:
            """Drop the connection as a failing network or a killed server would."""
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

        def serve_bytes(self, data: bytes) -> None:
            asked = self.headers.get("Range")
            store.ranges.append(asked)
            first = 0
            status = 200
            if asked and (match := re.fullmatch(r"bytes=(\d+)-(\d*)", asked)):
                first, status = int(match.group(1)), 206
                last = int(match.group(2)) if match.group(2) else len(data) - 1
                body = data[first : last + 1]
            else:
                body = data
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-SHA256", sha(data))
            if status == 206:
                self.send_header("Content-Range", f"bytes {first}-{first + len(body) - 1}/*")
            self.end_headers()
            with store.lock:
                cut = store.cut_downloads > 0
                store.cut_downloads -= cut
            if cut:
                half = body[: len(body) // 2]
                self.wfile.write(half)
                store.body_bytes_sent += len(half)
                self.cut()
                return
            self.wfile.write(body)
            store.body_bytes_sent += len(body)

        def do_GET(self) -> None:
            if self.path == "/v1/transfers":
                if not store.direct:
                    self.answer(404, {"detail": "an older file store"})
                    return
                self.answer(
                    200,
                    {
                        "direct_uploads": True,
                        "direct_downloads": True,
                        "direct_min_bytes": PART,
                        "part_size": PART,
                        "pack_max_bytes": 0,
                        "pack_max_files": 0,
                    },
                )
            elif self.path == f"{BASE}/files":
                modified = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
                self.answer(
                    200,
                    [
                        {"path": n, "size": len(d), "sha256": sha(d), "modified_at": modified}
                        for n, d in store.files.items()
                    ],
                )
            elif self.path.startswith((f"{BASE}/files/", "/objects/")):
                self.serve_bytes(store.files[self.path.rsplit("/", 1)[1]])
            else:
                self.answer(404, {"detail": self.path})

        def do_PUT(self) -> None:
            length = int(self.headers["Content-Length"])
            if self.path.startswith("/s3/parts/"):
                number = int(self.path.rsplit("/", 1)[1])
                store.part_puts.append(number)
                if number == store.cut_part:
                    store.cut_part = None
                    self.rfile.read(length // 2)
                    self.cut()
                    return
                data = self.rfile.read(length)
                store.parts[number] = data
                self.send_response(200)
                self.send_header("ETag", f'"{sha(data)[:16]}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            store.upload_requests += 1
            with store.lock:
                cut = store.cut_uploads > 0
                store.cut_uploads -= cut
            if cut:
                self.rfile.read(length // 2)
                self.cut()
                return
            data = self.rfile.read(length)
            if store.fail_uploads:
                self.answer(store.fail_uploads.pop(0), {"detail": "try later"}, Retry_After="0")
                return
            if self.headers.get("X-Content-SHA256") != sha(data):
                self.answer(422, {"detail": "the content's SHA-256 differs"})
                return
            name = self.path.rsplit("/", 1)[1]
            store.files[name] = data
            self.answer(201, {"path": name, "size": len(data), "sha256": sha(data)})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == f"{BASE}/link":
                self.answer(200, {"linked": [], "missing": [f["path"] for f in request["files"]]})
            elif self.path == f"{BASE}/downloads":
                host = f"http://{self.headers['Host']}"
                self.answer(
                    200,
                    {
                        "files": [
                            {
                                "path": p,
                                "url": f"{host}/objects/{p}",
                                "offset": None,
                                "size": len(store.files[p]),
                                "sha256": sha(store.files[p]),
                            }
                            for p in request["paths"]
                        ],
                        "expires_at": "2099-01-01T00:00:00Z",
                    },
                )
            elif self.path == f"{BASE}/uploads":
                if store.fail_starts:
                    self.answer(store.fail_starts.pop(0), {"detail": "busy"}, Retry_After="0")
                    return
                store.starts += 1
                if store.cut_starts:
                    store.cut_starts -= 1
                    self.cut()
                    return
                parts = -(-request["size"] // PART)
                ticket = {"upload_id": "u1", "multipart_id": "m1", "part_size": PART}
                self.answer(201, {**ticket, "parts": parts})
            elif self.path.endswith("/parts"):
                host = f"http://{self.headers['Host']}"
                urls = [f"{host}/s3/parts/{p['number']}" for p in request["parts"]]
                self.answer(200, {"urls": urls, "expires_at": "2099-01-01T00:00:00Z"})
            elif self.path.endswith("/complete"):
                data = b"".join(store.parts[n] for n in sorted(store.parts))
                crcs = [p["crc32"] for p in request["parts"]]
                assert crcs == [crc32(store.parts[n]) for n in sorted(store.parts)]
                store.files[request["path"]] = data
                self.answer(201, {"path": request["path"], "sha256": sha(data)})
            else:
                self.answer(404, {"detail": self.path})

    return Handler


@pytest.fixture
def store() -> Iterator[Store]:
    state = Store()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.files["url"] = f"http://127.0.0.1:{server.server_address[1]}".encode()
    yield state
    server.shutdown()
    server.server_close()


def pipe_to(store: Store, tmp_path: Path, attempts: int = 5) -> FilePipe:
    url = store.files.pop("url").decode()
    center = RemoteCenter(
        url,
        "token",
        "vision",
        "m",
        "1",
        digests=DigestCache(tmp_path / "digests.sqlite"),
        retries=Retries(attempts=attempts, first_delay_s=0),  # no waiting in tests
    )
    return FilePipe(center, "m", "1", quiet=True)


def weights(size: int = 4 << 20) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32)


@pytest.mark.parametrize("direct", [False, True], ids=["through-the-store", "presigned"])
def test_a_pull_cut_half_way_goes_on_from_where_it_stopped(
    store: Store, tmp_path: Path, direct: bool
) -> None:
    data = weights()
    store.direct = direct
    store.files["model.bin"] = data
    store.cut_downloads = 1
    pipe = pipe_to(store, tmp_path)

    pulled = pipe.pull_file("model.bin", tmp_path / "out" / "model.bin")

    assert pulled.read_bytes() == data
    first, resumed = store.ranges
    assert first is None
    assert resumed is not None
    assert resumed.startswith("bytes=")
    assert int(resumed.removeprefix("bytes=").split("-")[0]) > 0
    resent = store.body_bytes_sent - len(data)
    assert resent < len(data)  # the bytes received before the cut are not sent again
    assert resent == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.bin"]


def test_a_pull_cut_every_time_fails_after_a_few_tries(store: Store, tmp_path: Path) -> None:
    store.files["model.bin"] = weights(1 << 16)
    store.cut_downloads = 1000
    pipe = pipe_to(store, tmp_path, attempts=3)
    with pytest.raises(PipeError, match=r"model\.bin"):
        pipe.pull_file("model.bin", tmp_path / "model.bin")
    assert not (tmp_path / "model.bin").exists()
    assert len(store.ranges) <= 12  # bounded, even though each try brings some bytes


def test_a_push_cut_half_way_is_sent_again(store: Store, tmp_path: Path) -> None:
    data = weights()
    (tmp_path / "model.bin").write_bytes(data)
    store.cut_uploads = 1
    pipe = pipe_to(store, tmp_path)

    pipe.import_file(tmp_path / "model.bin")

    assert store.files["model.bin"] == data
    assert store.upload_requests == 2


def test_busy_or_failing_answers_are_retried_and_a_4xx_is_not(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    store.fail_uploads = [503, 429, 500]
    pipe = pipe_to(store, tmp_path)
    pipe.import_file(tmp_path / "model.bin")
    assert store.files["model.bin"] == b"weights"
    assert store.upload_requests == 4

    store.upload_requests = 0
    store.fail_uploads = [409]
    (tmp_path / "other.bin").write_bytes(b"other")
    with pytest.raises(PipeError, match="409"):
        pipe.import_file(tmp_path / "other.bin")
    assert store.upload_requests == 1


def test_a_direct_upload_cut_half_way_sends_only_the_part_that_was_cut(
    store: Store, tmp_path: Path
) -> None:
    data = weights(3 * PART + 1000)
    (tmp_path / "model.bin").write_bytes(data)
    store.direct = True
    store.cut_part = 2
    pipe = pipe_to(store, tmp_path)

    pipe.import_file(tmp_path / "model.bin")

    assert store.files["model.bin"] == data
    assert sorted(store.part_puts) == [1, 2, 2, 3, 4]


def test_a_direct_upload_whose_start_was_answered_but_lost_is_not_started_twice(
    store: Store, tmp_path: Path
) -> None:
    """Each start makes a multipart upload: sending it again after the answer was lost
    would leave the first one unfinished, out of anyone's reach."""
    (tmp_path / "model.bin").write_bytes(weights(2 * PART))
    store.direct = True
    store.cut_starts = 1
    pipe = pipe_to(store, tmp_path)

    with pytest.raises(PipeError, match=r"model\.bin"):
        pipe.import_file(tmp_path / "model.bin")
    assert store.starts == 1
    assert store.part_puts == []


def test_a_direct_upload_start_turned_away_is_sent_again(store: Store, tmp_path: Path) -> None:
    data = weights(2 * PART)
    (tmp_path / "model.bin").write_bytes(data)
    store.direct = True
    store.fail_starts = [503, 429]
    pipe = pipe_to(store, tmp_path)

    pipe.import_file(tmp_path / "model.bin")

    assert store.starts == 1
    assert store.files["model.bin"] == data


def test_a_pull_that_fails_for_another_reason_than_a_cut_is_a_pipe_error() -> None:
    """A body the client cannot decode is no cut: not tried again, and the caller gets the
    pipe's own error, never an httpx one."""
    opened = 0

    @contextlib.contextmanager
    def undecodable(start: int) -> Iterator[Iterator[bytes]]:
        nonlocal opened
        opened += 1
        if opened:  # always: the opener fails before its first chunk
            raise httpx.DecodingError("bad gzip")
        yield iter(())

    with pytest.raises(PipeError, match=r"cannot pull a\.bin: bad gzip"):
        list(resumed(undecodable, "a.bin", Retries(first_delay_s=0)))
    assert opened == 1
