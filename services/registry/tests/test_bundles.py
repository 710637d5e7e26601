"""Uploaded code bundles: what passes, what is refused (with the member named), how uploads
are received and stored."""

import hashlib
import io
import os
import tarfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from services.registry.bundles.archive import (
    BundleRejected,
    CheckedBundle,
    check_bundle,
    receive_bundle,
)
from services.registry.bundles.store import BundleStore

SOURCE = "import modelcloud\n\n@modelcloud.setup\ndef setup():\n    return None\n"

Member = tuple[tarfile.TarInfo, bytes | None]


def file(name: str, data: bytes | str = b"x") -> Member:
    content = data.encode() if isinstance(data, str) else data
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def folder(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


def link(name: str, target: str, *, hard: bool = False) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def write_tar(path: Path, members: Iterable[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as archive:  # type: ignore[call-overload]
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def check(path: Path, **limits: int) -> CheckedBundle:
    data = path.read_bytes()
    return check_bundle(path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), **limits)


def rejection(path: Path, **limits: int) -> str:
    with pytest.raises(BundleRejected) as caught:
        check(path, **limits)
    return caught.value.message


# ----------------------------------------------------------------------------- accepted


def test_bundle_with_cloud_model_at_the_top(tmp_path: Path) -> None:
    path = write_tar(
        tmp_path / "code.tar.gz",
        [
            folder("./"),
            file("./cloud_model.py", SOURCE),
            file("./requirements.txt", "torch\n"),
            file("./modelcloud.yml", "python: '3.11'\n"),
            folder("./models"),
            file("./models/weights.pkl", b"\x80\x04weights"),
            link("./models/latest.pkl", "weights.pkl"),
            link("./features", "models/../models"),
            file("./labels.json", "{}"),
            link("./labels-copy.json", "./labels.json", hard=True),
        ],
    )
    data = path.read_bytes()

    bundle = check(path)

    assert bundle == CheckedBundle(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        root="",
        files=(
            "cloud_model.py",
            "features",
            "labels-copy.json",
            "labels.json",
            "modelcloud.yml",
            "models/latest.pkl",
            "models/weights.pkl",
            "requirements.txt",
        ),
        cloud_model=SOURCE,
        modelcloud_yml="python: '3.11'\n",
        has_requirements=True,
    )


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_bundle_with_one_top_level_folder(tmp_path: Path, mode: str) -> None:
    path = write_tar(
        tmp_path / "code.tgz",
        [
            folder("code"),
            file("code/cloud_model.py", SOURCE),
            folder("code/features"),
            file("code/features/mean.npy", b"\x93NUMPY"),
            link("code/models", "features"),
        ],
        mode,
    )

    bundle = check(path)

    assert bundle.root == "code"
    assert bundle.files == ("cloud_model.py", "features/mean.npy", "models")
    assert bundle.cloud_model == SOURCE
    assert bundle.modelcloud_yml is None
    assert bundle.has_requirements is False


def test_utf8_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "b.tar", [file("cloud_model.py", b"\xef\xbb\xbfx = 1\n")], "w")

    assert check(path).cloud_model == "x = 1\n"


# ----------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([file("../evil.py")], "member '../evil.py' points outside the bundle"),
        ([file("/abs/cloud_model.py")], "member '/abs/cloud_model.py' has an absolute path"),
        ([file("a/../../x")], "member 'a/../../x' points outside the bundle"),
        ([file("models\\..\\x.py")], "member 'models\\\\..\\\\x.py' has a backslash"),
        ([link("passwd", "/etc/passwd")], "member 'passwd' points outside the bundle"),
        (
            [folder("models"), link("models/latest", "../../outside")],
            "member 'models/latest' points outside the bundle",
        ),
        # Looks inside when read as text, but `here` is the bundle root itself.
        (
            [link("here", "."), link("escape", "here/..")],
            "member 'escape' points outside the bundle",
        ),
        ([link("loop", "loop/x")], "member 'loop' points outside the bundle"),
        ([link("h", "../outside", hard=True)], "member 'h' points outside the bundle"),
        ([link("h", "/etc/passwd", hard=True)], "member 'h' points outside the bundle"),
        ([link("h", "missing.py", hard=True)], "member 'h' links to 'missing.py', which is not"),
        (
            [link("models", "weights"), file("models/evil.py")],
            "member 'models/evil.py' is inside 'models', which is not a folder",
        ),
        ([special("pipe", tarfile.FIFOTYPE)], "member 'pipe' is a FIFO"),
        ([special("null", tarfile.CHRTYPE)], "member 'null' is a device file"),
        ([special("sda", tarfile.BLKTYPE)], "member 'sda' is a device file"),
        ([file("dup.py"), file("./dup.py")], "member './dup.py' appears more than once"),
        ([file("caf\udce9.py")], "has a name that is not UTF-8"),
        ([file("./")], "member './' is not a folder"),
    ],
)
def test_bad_members_reject_the_whole_bundle(
    tmp_path: Path, members: list[Member], message: str
) -> None:
    path = write_tar(tmp_path / "b.tar.gz", [file("cloud_model.py", SOURCE), *members])

    assert message in rejection(path)


def test_nul_in_a_member_name(tmp_path: Path) -> None:
    # A NUL can only get into a name through a pax header, which tar readers honour.
    info, data = file("innocent.py")
    info.pax_headers = {"path": "evil\x00.py"}
    path = write_tar(tmp_path / "b.tar", [file("cloud_model.py", SOURCE), (info, data)], "w")

    assert "member 'evil\\x00.py' has a backslash or control character" in rejection(path)


def test_link_in_a_top_level_folder_may_not_leave_it(tmp_path: Path) -> None:
    members = [file("code/cloud_model.py", SOURCE), link("code/up", "../elsewhere")]
    path = write_tar(tmp_path / "b.tgz", members)

    assert rejection(path) == "member 'code/up' points outside the bundle"


def test_too_many_members(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "b.tgz", [file("cloud_model.py", SOURCE), file("a"), file("b")])

    assert check(path, max_members=3).files == ("a", "b", "cloud_model.py")
    assert rejection(path, max_members=2) == "the bundle has more than 2 members"


def test_unpacked_size_is_bounded(tmp_path: Path) -> None:
    # 8 MiB of zeros compresses to a few KiB: the sizes in the headers are what count.
    members = [file("cloud_model.py", SOURCE), file("models/zeros.bin", bytes(8 << 20))]
    path = write_tar(tmp_path / "b.tgz", members)

    assert path.stat().st_size < 64 << 10
    assert rejection(path, max_unpacked_bytes=4 << 20) == (
        f"the bundle unpacks to more than {4 << 20} bytes"
    )


@pytest.mark.parametrize(
    "members",
    [
        [file("main.py", SOURCE), file("requirements.txt")],
        [file("a/b/cloud_model.py", SOURCE)],  # two folders deep
        [file("one/cloud_model.py", SOURCE), file("two/cloud_model.py", SOURCE)],
        [file("code/cloud_model.py", SOURCE), file("README.md")],  # not the only top entry
    ],
)
def test_cloud_model_must_be_at_the_root(tmp_path: Path, members: list[Member]) -> None:
    path = write_tar(tmp_path / "b.tgz", members)

    assert "the bundle has no cloud_model.py at its top level" in rejection(path)


def test_cloud_model_must_be_a_regular_file(tmp_path: Path) -> None:
    path = write_tar(
        tmp_path / "b.tgz", [file("real.py", SOURCE), link("cloud_model.py", "real.py")]
    )

    assert rejection(path) == "cloud_model.py must be a regular file, not a folder or a link"


def test_cloud_model_must_be_utf8(tmp_path: Path) -> None:
    latin1 = "label = 'café'\n".encode("latin-1")
    path = write_tar(tmp_path / "b.tgz", [file("code/cloud_model.py", latin1)])

    assert rejection(path) == "code/cloud_model.py is not UTF-8 text"


def test_cloud_model_size_is_bounded(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "b.tgz", [file("cloud_model.py", b"#" * ((1 << 20) + 1))])

    assert rejection(path) == "cloud_model.py is larger than 1024 KiB"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"python: '3.11'\n\xff\n", "modelcloud.yml is not UTF-8 text"),
        (b"#" * ((256 << 10) + 1), "modelcloud.yml is larger than 256 KiB"),
    ],
)
def test_build_file_is_checked_like_the_source(
    tmp_path: Path, content: bytes, message: str
) -> None:
    members = [file("cloud_model.py", SOURCE), file("modelcloud.yml", content)]
    path = write_tar(tmp_path / "b.tgz", members)

    assert rejection(path) == message


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_truncated_archives(tmp_path: Path, mode: str) -> None:
    weights = file("models/weights.bin", os.urandom(256 << 10))  # incompressible
    path = write_tar(tmp_path / "b.tar", [file("cloud_model.py", SOURCE), weights], mode)

    assert rejection(_truncated(path)) == "the bundle is a damaged or truncated tar archive"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"print('I am not a tar')\n" * 40, "the bundle is not a tar archive"),
        (b"\x1f\x8b\x08\x00garbage", "the bundle is not a tar archive"),
        (b"", "the bundle is empty"),
    ],
)
def test_not_a_tar(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "b.tgz"
    path.write_bytes(content)

    assert rejection(path).startswith(message)


# ----------------------------------------------------------------------------- receiving


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_receive_hashes_what_it_writes(tmp_path: Path) -> None:
    target = tmp_path / "upload.tar"

    sha256, size = await receive_bundle(_chunks(b"abc", b"", b"def"), target, max_bytes=6)

    assert target.read_bytes() == b"abcdef"
    assert (sha256, size) == (hashlib.sha256(b"abcdef").hexdigest(), 6)


async def test_receive_over_the_limit_keeps_nothing(tmp_path: Path) -> None:
    target = tmp_path / "upload.tar"

    with pytest.raises(BundleRejected) as caught:
        await receive_bundle(_chunks(b"abc", b"def", b"g"), target, max_bytes=6)

    assert caught.value.message == "the bundle is larger than 6 bytes"
    assert not target.exists()


async def test_receive_removes_the_partial_file_when_the_upload_breaks(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise ConnectionResetError

    target = tmp_path / "upload.tar"
    with pytest.raises(ConnectionResetError):
        await receive_bundle(broken(), target, max_bytes=100)

    assert not target.exists()


# ----------------------------------------------------------------------------- storing


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "store")
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    first.write_bytes(b"same bytes")
    second.write_bytes(b"same bytes")
    sha256 = hashlib.sha256(b"same bytes").hexdigest()

    stored = store.put(first, sha256)
    again = store.put(second, sha256)

    assert stored == again == tmp_path / "store" / sha256[:2] / f"{sha256}.tar"
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == [stored]
    assert not first.exists()
    assert not second.exists()
    assert store.path_of(sha256) == stored
    with store.open(sha256) as handle:
        assert handle.read() == b"same bytes"


@pytest.mark.parametrize(
    "digest",
    [
        hashlib.sha256(b"never stored").hexdigest(),
        hashlib.sha256(b"x").hexdigest().upper(),
        hashlib.sha256(b"x").hexdigest() + "\n",
        "../../etc/passwd",
        "",
    ],
)
def test_unknown_or_malformed_digests_are_not_found(tmp_path: Path, digest: str) -> None:
    store = BundleStore(tmp_path)
    (tmp_path / "x.tar").write_bytes(b"x")
    store.put(tmp_path / "x.tar", hashlib.sha256(b"x").hexdigest())

    with pytest.raises(KeyError):
        store.path_of(digest)


def test_put_refuses_a_malformed_digest(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"x")

    with pytest.raises(ValueError, match="not a lowercase hex sha256 digest"):
        BundleStore(tmp_path / "store").put(tmp_path / "x.tar", "../escape")
    assert (tmp_path / "x.tar").exists()
