"""Issue 13, item 6: the model-file pipe never carries out a file from outside the folder it
imports, and never writes outside the folder it pulls into, whatever names the center sends
and whatever links lie in the way."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from modelcloud.pipe import FilePipe, ModelFile, PipeError, UnsafePath
from modelcloud.pipe._digests import DigestCache
from modelcloud.pipe._remote import RemoteCenter

CONTENT = b"evil"
MODIFIED = "2026-01-02T03:04:05+00:00"


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def hostile_store(tmp_path: Path, listing: list[dict[str, object]]) -> FilePipe:
    """A pipe on a file store that lists ``listing`` and serves ``CONTENT`` for any file."""

    def answer(request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        if path == "/v1/transfers":
            return httpx.Response(404)
        if path.endswith("/versions/1/files"):
            return httpx.Response(200, json=listing)
        sha256 = hashlib.sha256(CONTENT).hexdigest()
        return httpx.Response(200, content=CONTENT, headers={"x-content-sha256": sha256})

    center = RemoteCenter(
        "http://filestore",
        "token",
        "vision",
        "m",
        "1",
        transport=httpx.MockTransport(answer),
        digests=DigestCache(tmp_path / "digests.sqlite"),
    )
    return FilePipe(center, "m", "1", quiet=True)


def entry(name: str, modified_at: str = MODIFIED) -> dict[str, object]:
    sha256 = hashlib.sha256(CONTENT).hexdigest()
    return {"path": name, "size": len(CONTENT), "modified_at": modified_at, "sha256": sha256}


# ---------------------------------------------------------------- import_dir and links


def test_import_dir_refuses_a_link_to_a_file_outside_the_folder(tmp_path: Path) -> None:
    secret = tmp_path / "admin.token"
    secret.write_text("s3cret")
    folder = tmp_path / "workspace"
    (folder / "code").mkdir(parents=True)
    (folder / "train.py").write_text("print('train')\n")
    (folder / "code" / "token").symlink_to(secret)
    pipe = ModelFile("m", "1", center_path=tmp_path / "center").filepipe()

    with pytest.raises(UnsafePath, match="outside") as refused:
        pipe.import_dir(folder)

    assert refused.value.filename == "code/token"
    assert pipe.scan_local() == []  # refused whole: not even train.py went


def test_import_dir_keeps_links_that_stay_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "workspace"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"weights")
    (folder / "latest.bin").symlink_to("weights.bin")
    pipe = ModelFile("m", "1", center_path=tmp_path / "center").filepipe()

    assert pipe.import_dir(folder) == ["latest.bin", "weights.bin"]
    assert (tmp_path / "center" / "m" / "1" / "latest.bin").read_bytes() == b"weights"


def test_a_link_planted_in_a_shared_center_is_not_a_file_of_the_pipe(tmp_path: Path) -> None:
    secret = tmp_path / "home" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("private key")
    pipe = ModelFile("m", "1", center_path=tmp_path / "center").filepipe()
    pipe.import_file(_written(tmp_path / "model.db", b"weights"))
    (tmp_path / "center" / "m" / "1" / "id_rsa").symlink_to(secret)

    assert pipe.scan_local() == ["model.db"]
    out = tmp_path / "out"
    assert pipe.pull_dir(out) == ["model.db"]
    assert files_under(out) == ["model.db"]


def test_an_import_never_writes_through_a_link_in_the_center(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pipe = ModelFile("m", "1", center_path=tmp_path / "center").filepipe()
    (tmp_path / "center" / "m" / "1" / "weights").symlink_to(elsewhere)

    with pytest.raises(UnsafePath, match="symbolic link") as refused:
        pipe.import_file(_written(tmp_path / "model.db", b"weights"), subdir="weights")

    assert refused.value.filename == "weights/model.db"
    assert files_under(elsewhere) == []


# ---------------------------------------------------------------- names the store sends


@pytest.mark.parametrize(
    "name",
    [
        "../escaped.txt",
        "a/../../escaped.txt",
        "{tmp}/escaped.txt",
        "a\\..\\..\\escaped.txt",
        "C:escaped.txt",
        ".modelcloud-index.json",
    ],
)
def test_pull_dir_refuses_a_name_that_leaves_the_folder(tmp_path: Path, name: str) -> None:
    name = name.format(tmp=tmp_path)
    pipe = hostile_store(tmp_path, [entry("model.db"), entry(name)])
    out = tmp_path / "project" / "out"
    out.mkdir(parents=True)

    with pytest.raises(PipeError) as refused:
        pipe.pull_dir(out)

    assert refused.value.filename == name
    assert repr(name) in str(refused.value)
    assert files_under(tmp_path / "project") == []  # checked before anything was written
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "project" / "escaped.txt").exists()


@pytest.mark.parametrize("pull", ["dir", "file"])
def test_a_pull_never_writes_through_a_link_in_the_target_folder(tmp_path: Path, pull: str) -> None:
    pipe = hostile_store(tmp_path, [entry("sub/evil.txt")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    pulls: dict[str, Callable[[], object]] = {
        "dir": lambda: pipe.pull_dir(out),
        "file": lambda: pipe.pull_file("sub/evil.txt", out),
    }

    with pytest.raises(UnsafePath, match="symbolic link") as refused:
        pulls[pull]()

    assert refused.value.filename == "sub/evil.txt"
    assert files_under(elsewhere) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"modified_at": "not a time"},
        {"size": "many"},
        {"sha256": None, "size": None},
    ],
)
def test_a_malformed_listing_is_a_pipe_error_naming_the_file(
    tmp_path: Path, bad: dict[str, object]
) -> None:
    pipe = hostile_store(tmp_path, [{**entry("model.db"), **bad}])

    with pytest.raises(PipeError) as refused:
        pipe.scan_local()

    assert refused.value.filename == "model.db"


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
