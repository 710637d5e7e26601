"""File and URL inputs: the SSRF guard, size caps, uploads, and archive unpacking."""

import gzip
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelcloud import Model
from modelcloud._files import FilePolicy, FileRejected, unpack_archive
from modelcloud.data_types import DecodeContext, InvalidValue, file, image, text

REQUESTS: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        REQUESTS.append(self.path)
        port = self.server.server_address[1]
        routes = {
            "/model.pkl": (200, {}, b"weights"),
            # Compressed whatever the client asked for, as some servers do.
            "/gzipped.pkl": (200, {"Content-Encoding": "gzip"}, gzip.compress(b"weights")),
            "/bomb.pkl": (200, {"Content-Encoding": "gzip"}, gzip.compress(b"\0" * 100_000)),
            "/big.pkl": (200, {}, b"x" * 5000),
            "/to-loopback": (302, {"Location": f"http://127.0.0.1:{port}/model.pkl"}, b""),
            "/missing": (404, {}, b"nope"),
        }
        status, headers, body = routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def ctx_with(tmp_path: Path, **policy: object) -> DecodeContext:
    return DecodeContext(FilePolicy(roots=(tmp_path,), **policy), tmp_path / "scratch")  # type: ignore[arg-type]


def test_urls_to_private_addresses_are_refused_by_default(tmp_path, web):
    with pytest.raises(InvalidValue, match="non-public address"):
        file().deserialize(f"{web}/model.pkl", ctx_with(tmp_path))
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:1/", "http://10.0.0.1/"):
        with pytest.raises(InvalidValue, match="non-public address"):
            image().deserialize(url, ctx_with(tmp_path))
    assert not [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()]


def test_other_schemes_are_refused(tmp_path):
    with pytest.raises(FileRejected, match="only http and https"):
        FilePolicy().download("file:///etc/passwd", io.BytesIO())


def test_allowed_url_is_downloaded_into_the_request_scratch_folder(tmp_path, web):
    path = file(extension=".pkl").deserialize(
        f"{web}/model.pkl", ctx_with(tmp_path, allow_private_urls=True)
    )
    assert Path(path).read_bytes() == b"weights"
    assert Path(path).is_relative_to(tmp_path / "scratch")


def test_each_redirect_hop_is_checked(tmp_path, web):
    port = web.rsplit(":", 1)[1]
    policy = FilePolicy(extra_allowed_hosts=frozenset({"localhost"}))
    # localhost is allowed by name; its redirect to 127.0.0.1 is not.
    with pytest.raises(FileRejected, match=r"127\.0\.0\.1 resolves to a non-public address"):
        policy.download(f"http://localhost:{port}/to-loopback", io.BytesIO())


def test_size_cap_and_http_errors(tmp_path, web):
    policy = FilePolicy(allow_private_urls=True)
    with pytest.raises(FileRejected, match="larger than 100 bytes"):
        policy.download(f"{web}/big.pkl", io.BytesIO(), limit=100)
    with pytest.raises(FileRejected, match="HTTP 404"):
        policy.download(f"{web}/missing", io.BytesIO())
    with pytest.raises(FileRejected, match="could not fetch"):
        policy.download("http://127.0.0.1:1/refused", io.BytesIO())


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar(add: "callable") -> bytes:  # type: ignore[valid-type]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        add(tf)
    return buffer.getvalue()


def test_archives_unpack_inside_the_target(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"weights/w.bin": b"1", "config.json": b"{}"}))
    out = unpack_archive(archive, tmp_path / "out")
    assert (out / "weights" / "w.bin").read_bytes() == b"1"


@pytest.mark.parametrize(
    "members", [{"../evil.txt": b"x"}, {"/abs/evil.txt": b"x"}, {"ok/../../evil": b"x"}]
)
def test_zip_members_escaping_the_folder_are_rejected_whole(tmp_path, members):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"good.txt": b"g", **members}))
    with pytest.raises(FileRejected, match="points outside"):
        unpack_archive(archive, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))
    assert not (tmp_path / "evil.txt").exists()


def test_tar_links_are_rejected_whole(tmp_path):
    def add(tf: tarfile.TarFile) -> None:
        good = tarfile.TarInfo("good.txt")
        good.size = 1
        tf.addfile(good, io.BytesIO(b"g"))
        link = tarfile.TarInfo("passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar(add))
    with pytest.raises(FileRejected, match="not a file or folder"):
        unpack_archive(archive, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))


def upload_model(seen: list[str]) -> Model:
    model = Model()

    @model.command(
        "read",
        inputs={"doc": file(extension=".txt"), "folder": file(is_directory=True)},
        outputs={"text": text()},
    )
    def read(_, inputs):
        seen.extend([inputs["doc"], inputs["folder"]])
        folder = Path(inputs["folder"])
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        return {"text": Path(inputs["doc"]).read_text() + "|" + ",".join(names)}

    return model


async def test_uploaded_files_and_folders_reach_the_model_then_are_cleaned_up(serve, tmp_path):
    seen: list[str] = []
    client = serve(upload_model(seen))
    response = await client.post(
        "/read",
        files={
            "doc": ("../../notes.txt", b"hello", "text/plain"),
            "folder": ("w.zip", _zip({"a/b.bin": b"1", "c.json": b"{}"}), "application/zip"),
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "hello|a/b.bin,c.json"}
    assert Path(seen[0]).name == "notes.txt"  # the client's path is never used as a path
    assert not Path(seen[0]).exists()  # the request's scratch folder is gone


async def test_an_unsafe_uploaded_archive_is_a_422(serve, tmp_path):
    client = serve(upload_model([]))
    response = await client.post(
        "/read",
        files={
            "doc": ("n.txt", b"hello", "text/plain"),
            "folder": ("w.zip", _zip({"../../escape.txt": b"x"}), "application/zip"),
        },
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "folder"
    assert not list(tmp_path.rglob("escape.txt"))


def test_a_compressed_answer_is_saved_as_the_file_itself(tmp_path, web):
    policy = FilePolicy(allow_private_urls=True)
    out = io.BytesIO()
    policy.download(f"{web}/gzipped.pkl", out)
    assert out.getvalue() == b"weights"
    # The cap counts the file's bytes, not the compressed ones.
    with pytest.raises(FileRejected, match="larger than 1000 bytes"):
        policy.download(f"{web}/bomb.pkl", io.BytesIO(), limit=1000)


def test_a_name_that_turns_private_after_the_check_gets_no_request(tmp_path, web, monkeypatch):
    # DNS rebinding: the name resolved to a public address when checked, then to a private
    # one when connected. The connection is refused before the request is sent.
    monkeypatch.setattr(FilePolicy, "_check_url", lambda self, url: None)
    REQUESTS.clear()
    with pytest.raises(FileRejected, match="non-public address"):
        FilePolicy().download(f"{web}/model.pkl", io.BytesIO())
    assert REQUESTS == []


def test_proxies_from_the_environment_are_not_used(tmp_path, web, monkeypatch):
    # A proxy would hide the address the request really goes to from the guard.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    out = io.BytesIO()
    FilePolicy(allow_private_urls=True).download(f"{web}/model.pkl", out)
    assert out.getvalue() == b"weights"
