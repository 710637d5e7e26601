"""Checking an uploaded code bundle: a .tar, .tar.gz or .tgz of the model's code folder, laid
out as seed 001's Tutorial 2 describes (``cloud_model.py`` required; ``requirements.txt``,
``features/``, ``models/`` and ``modelcloud.yml`` optional).

Nothing is ever extracted here. Every member header is read and one bad member rejects the
whole bundle, so the builder can later unpack a checked bundle without re-checking paths:
no member leaves the bundle root by name, by symlink or by hardlink, and none is a device.
The raw headers are checked first (:mod:`services.common.tar_guard`): ``tarfile`` never
parses an oversized pax or GNU long-name header, whose digits take it quadratic time.
"""

import asyncio
import hashlib
import lzma
import tarfile
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.common.tar_guard import TarLimits, TarRejected, open_checked_tar

__all__ = ["BundleRejected", "CheckedBundle", "check_bundle", "receive_bundle"]

SOURCE_FILE = "cloud_model.py"
BUILD_FILE = "modelcloud.yml"
_MAX_SOURCE = 1 << 20
_MAX_BUILD_FILE = 256 << 10
_MAX_NAME_BYTES = 4096  # PATH_MAX: a pax header could otherwise carry a megabyte-long name
_MAX_PART_BYTES = 255  # NAME_MAX
_MAX_LINK_HOPS = 40  # what Linux allows when resolving a path
# Decompressors report damage with their own exception types.
_DAMAGED = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, UnicodeError)


class BundleRejected(ValueError):
    """The bundle is refused as a whole; ``message`` is safe to show the caller (it names
    the member at fault, never a server path)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class CheckedBundle:
    """What the registry learned from a bundle that passed every check.

    ``root`` is ``''`` when ``cloud_model.py`` is at the top of the archive, or the name of
    the one top-level folder holding it (``tar czf code.tgz code/`` makes such bundles);
    ``files`` are the non-folder members, relative to ``root``.
    """

    sha256: str
    size: int
    root: str
    files: tuple[str, ...]
    cloud_model: str
    modelcloud_yml: str | None
    has_requirements: bool


async def receive_bundle(
    chunks: AsyncIterator[bytes], target: Path, *, max_bytes: int
) -> tuple[str, int]:
    """Stream an upload into ``target`` and return its sha256 and size.

    Each write and hash runs in a worker thread (hashlib releases the GIL on large
    buffers), so a slow disk never stalls other requests. Over ``max_bytes``, or on any
    failure or cancellation, the partial file is deleted before the error propagates.
    """
    digest = hashlib.sha256()
    size = 0
    out = await asyncio.to_thread(_create, target)
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise BundleRejected(f"the bundle is larger than {max_bytes} bytes")
            await asyncio.to_thread(_write, out, digest.update, chunk)
    except BaseException:
        # Synchronous on purpose: a cancelled task must still clean up, and close/unlink
        # of a local file are metadata operations, not long blocking I/O.
        _discard(out, target)
        raise
    await asyncio.to_thread(out.close)
    return digest.hexdigest(), size


def _create(target: Path) -> BinaryIO:
    return target.open("wb")


def _write(out: BinaryIO, update: Callable[[bytes], None], chunk: bytes) -> None:
    update(chunk)
    out.write(chunk)


def _discard(out: BinaryIO, target: Path) -> None:
    out.close()
    target.unlink(missing_ok=True)


def check_bundle(
    path: Path,
    *,
    sha256: str,
    size: int,
    max_members: int = 10_000,
    max_unpacked_bytes: int = 4 << 30,
) -> CheckedBundle:
    """Check the bundle at ``path`` member by member, without extracting anything.

    ``sha256`` and ``size`` are what :func:`receive_bundle` computed; they are carried into
    the result. Raises :class:`BundleRejected` for anything but a well-formed bundle.
    Blocking (it reads, and for compressed bundles decompresses, the whole file): async
    callers run it in a worker thread.
    """
    if size == 0:
        raise BundleRejected("the bundle is empty")
    limits = TarLimits(max_members=max_members, max_unpacked_bytes=max_unpacked_bytes)
    try:
        # Every raw header is checked before tarfile parses one (see tar_guard).
        with open_checked_tar(path, limits, what="the bundle") as archive:
            scan = _scan(archive, max_members, max_unpacked_bytes)
    except TarRejected as exc:
        raise BundleRejected(exc.message) from None
    except _DAMAGED:
        raise BundleRejected("the bundle is a damaged or truncated tar archive") from None
    root = _root(scan.members)
    tree = _rebased(scan.members, root)
    _check_tree(tree, root)
    prefix = f"{root}/" if root else ""
    source = _text(tree, scan.texts, prefix, SOURCE_FILE, _MAX_SOURCE)
    if source is None:  # for the type checker: _root made sure it is there
        raise BundleRejected(f"the bundle has no {SOURCE_FILE}")
    files = tuple(sorted(name for name, member in tree.items() if not member.isdir()))
    return CheckedBundle(
        sha256=sha256,
        size=size,
        root=root,
        files=files,
        cloud_model=source,
        modelcloud_yml=_text(tree, scan.texts, prefix, BUILD_FILE, _MAX_BUILD_FILE),
        has_requirements="requirements.txt" in files,
    )


@dataclass(frozen=True)
class _Scan:
    members: dict[str, tarfile.TarInfo]  # normalized name -> member, archive order
    texts: dict[str, bytes]  # small candidate cloud_model.py / modelcloud.yml contents


def _scan(archive: tarfile.TarFile, max_members: int, max_unpacked_bytes: int) -> _Scan:
    members: dict[str, tarfile.TarInfo] = {}
    texts: dict[str, bytes] = {}
    count = unpacked = 0
    first_top: str | None = None
    for member in archive:
        count += 1
        if count > max_members:
            raise BundleRejected(f"the bundle has more than {max_members} members")
        name = _normalized_name(member.name)
        _check_kind(member)
        if member.size < 0:  # a base-256 size field can say so; tarfile does not refuse it
            raise BundleRejected(f"member {member.name!r} has a negative size")
        if not name:  # the archive's own "./" entry
            if not member.isdir():
                raise BundleRejected(f"member {member.name!r} is not a folder")
            continue
        top = name.partition("/")[0]
        first_top = top if first_top is None else first_top
        if name in members:
            raise BundleRejected(f"member {member.name!r} appears more than once")
        members[name] = member
        if member.isfile():
            unpacked += member.size
            if unpacked > max_unpacked_bytes:
                raise BundleRejected(f"the bundle unpacks to more than {max_unpacked_bytes} bytes")
            # Read the few files we need while the stream is here: seeking back later
            # would decompress a large bundle a second time. Only the top level and the
            # first top-level folder can be the bundle root, which bounds what is kept.
            depth = name.count("/")
            candidate = depth == 0 or (depth == 1 and top == first_top)
            if candidate and name.rpartition("/")[2] in (SOURCE_FILE, BUILD_FILE):
                limit = _MAX_SOURCE if name.endswith(SOURCE_FILE) else _MAX_BUILD_FILE
                if member.size <= limit:
                    stream = archive.extractfile(member)
                    if stream is not None:
                        texts[name] = stream.read()
    if not members:
        raise BundleRejected("the bundle holds no files")
    return _Scan(members, texts)


def _normalized_name(raw: str) -> str:
    """The member's path without ``./`` or empty parts; rejects names that could escape."""
    if any(ord(c) < 32 or c in "\\\x7f" for c in raw):
        raise BundleRejected(f"member {raw!r} has a backslash or control character in its name")
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleRejected(f"member {raw!r} has a name that is not UTF-8") from None
    if raw.startswith("/"):
        raise BundleRejected(f"member {raw!r} has an absolute path")
    parts = raw.split("/")
    if ".." in parts:
        raise BundleRejected(f"member {raw!r} points outside the bundle")
    kept = [part for part in parts if part not in ("", ".")]
    if len(encoded) > _MAX_NAME_BYTES or any(len(p.encode()) > _MAX_PART_BYTES for p in kept):
        raise BundleRejected(f"member {raw[:60]!r}... has a name that is too long")
    return "/".join(kept)


def _check_kind(member: tarfile.TarInfo) -> None:
    if member.isfile() or member.isdir() or member.issym() or member.islnk():
        return
    if member.ischr() or member.isblk():
        raise BundleRejected(f"member {member.name!r} is a device file")
    if member.isfifo():
        raise BundleRejected(f"member {member.name!r} is a FIFO")
    raise BundleRejected(f"member {member.name!r} is not a file, folder or link")


def _root(members: Mapping[str, tarfile.TarInfo]) -> str:
    """``''`` when cloud_model.py is at the top; the folder's name when one folder holds
    everything, cloud_model.py included."""
    if SOURCE_FILE in members:
        return ""
    tops = {name.partition("/")[0] for name in members}
    if len(tops) == 1:
        (top,) = tops
        folder = members.get(top)
        if f"{top}/{SOURCE_FILE}" in members and (folder is None or folder.isdir()):
            return top
    raise BundleRejected(
        f"the bundle has no {SOURCE_FILE} at its top level (nor in a single top-level folder)"
    )


def _rebased(members: Mapping[str, tarfile.TarInfo], root: str) -> dict[str, tarfile.TarInfo]:
    if not root:
        return dict(members)
    cut = len(root) + 1
    return {name[cut:]: member for name, member in members.items() if name != root}


def _check_tree(tree: Mapping[str, tarfile.TarInfo], root: str) -> None:
    """Every member stays under ``root`` once links are followed."""
    symlinks = {name: member.linkname for name, member in tree.items() if member.issym()}
    for name, member in tree.items():
        # Nothing may live "inside" a file or a link: writing through a link is the classic
        # way out of an extraction folder, and no real code folder needs it.
        parent = name.rpartition("/")[0]
        while parent:
            above = tree.get(parent)
            if above is not None and not above.isdir():
                raise BundleRejected(
                    f"member {member.name!r} is inside {above.name!r}, which is not a folder"
                )
            parent = parent.rpartition("/")[0]
        if member.issym():
            start = name.rpartition("/")[0]
            absolute = member.linkname.startswith("/")
            if absolute or _resolve(f"{start}/{member.linkname}", symlinks) is None:
                raise BundleRejected(f"member {member.name!r} points outside the bundle")
        elif member.islnk():
            _check_hardlink(tree, member, root)


def _check_hardlink(
    tree: Mapping[str, tarfile.TarInfo], member: tarfile.TarInfo, root: str
) -> None:
    # A hardlink's target is a member name, relative to the top of the archive.
    parts = member.linkname.split("/")
    if member.linkname.startswith("/") or ".." in parts:
        raise BundleRejected(f"member {member.name!r} points outside the bundle")
    target = "/".join(part for part in parts if part not in ("", "."))
    if root:
        if not target.startswith(f"{root}/"):
            raise BundleRejected(f"member {member.name!r} points outside the bundle")
        target = target[len(root) + 1 :]
    linked = tree.get(target)
    if linked is None or not linked.isfile():
        raise BundleRejected(
            f"member {member.name!r} links to {member.linkname!r}, "
            "which is not a file in the bundle"
        )


def _resolve(path: str, symlinks: Mapping[str, str]) -> str | None:
    """Where ``path`` leads, following the bundle's own symlinks the way the kernel would
    once extracted; ``None`` when it leaves the bundle (or loops)."""
    done: list[str] = []
    todo = path.split("/")[::-1]
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(part)
        target = symlinks.get("/".join(done))
        if target is None:
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or target.startswith("/"):
            return None
        done.pop()
        todo.extend(target.split("/")[::-1])
    return "/".join(done)


def _text(
    tree: Mapping[str, tarfile.TarInfo],
    texts: Mapping[str, bytes],
    prefix: str,
    name: str,
    limit: int,
) -> str | None:
    member = tree.get(name)
    shown = prefix + name
    if member is None:
        return None
    if not member.isfile():
        raise BundleRejected(f"{shown} must be a regular file, not a folder or a link")
    if member.size > limit:
        raise BundleRejected(f"{shown} is larger than {limit // 1024} KiB")
    data = texts[shown]
    try:
        text = data.decode("utf-8-sig")  # a BOM is legal in Python source and YAML
    except UnicodeDecodeError:
        raise BundleRejected(f"{shown} is not UTF-8 text") from None
    if "\x00" in text:
        raise BundleRejected(f"{shown} is not UTF-8 text (it holds NUL bytes)")
    return text
