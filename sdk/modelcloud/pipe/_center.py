"""A central file store in a plain directory (a local folder or a shared mount):
``<center>/<model>/<version>/<files>``, browsable as is.

Writes are atomic (a temporary file renamed into place), so a reader never sees half a
file and an interrupted import leaves nothing behind. Each version folder keeps an index of
sizes, modification times and SHA-256 checksums (the pipe's ``crc``), so scans do not
re-read unchanged files.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelcloud.pipe._paths import INTERNAL_PREFIX, local_target
from modelcloud.pipe.errors import PipeError

log = logging.getLogger("modelcloud.pipe")
CHUNK = 1 << 20
INDEX_NAME = f"{INTERNAL_PREFIX}-index.json"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class FileAttributes:
    name: str
    size: int
    mtime_ns: int
    sha256: str


def copy_file(source: Path, target: Path, progress: Progress | None = None) -> str:
    """Copy ``source`` to ``target`` atomically, keeping its modification time; returns
    the SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f"{INTERNAL_PREFIX}-tmp-{uuid.uuid4().hex}"
    digest = hashlib.sha256()
    try:
        with source.open("rb") as reader, temporary.open("wb") as writer:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        shutil.copystat(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class VersionFolder:
    """One model version in the center, with its attribute index."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self) -> Iterator[tuple[str, Path]]:
        """The version's files. The pipe writes no links here, so a link someone put in a
        shared center is not a file of the version: following it would hand out (and
        index) whatever it points at."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            if path.is_symlink():
                log.warning("%s: a symbolic link in the center, left out of the pipe", path)
            elif path.is_file() and not relative.split("/", 1)[0].startswith(INTERNAL_PREFIX):
                yield relative, path

    def attributes(self) -> list[FileAttributes]:
        """Every file with its attributes; checksums are recomputed only for changed files."""
        index = self._read_index()
        out: list[FileAttributes] = []
        for name, path in self.files():
            stat = path.stat()
            known = index.get(name)
            if (
                known
                and "sha256" in known  # indexes written before the crc was the SHA-256 lack it
                and known["size"] == stat.st_size
                and known["mtime_ns"] == stat.st_mtime_ns
            ):
                sha256 = str(known["sha256"])
            else:
                sha256 = sha256_of(path)
            out.append(FileAttributes(name, stat.st_size, stat.st_mtime_ns, sha256))
        if {a.name: a.sha256 for a in out} != {k: v.get("sha256") for k, v in index.items()}:
            self._write_index(out)
        return out

    def remember(self, name: str, sha256: str) -> None:
        path = self.root / name
        stat = path.stat()
        index = self._read_index()
        index[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        self._write_raw(index)

    def forget(self, names: list[str]) -> None:
        index = self._read_index()
        for name in names:
            index.pop(name, None)
        self._write_raw(index)

    def _read_index(self) -> dict[str, dict[str, int | str]]:
        try:
            data = json.loads((self.root / INDEX_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_index(self, attributes: list[FileAttributes]) -> None:
        self._write_raw(
            {
                a.name: {"size": a.size, "mtime_ns": a.mtime_ns, "sha256": a.sha256}
                for a in attributes
            }
        )

    def _write_raw(self, index: dict[str, dict[str, int | str]]) -> None:
        if not self.root.is_dir():
            return
        temporary = self.root / f"{INTERNAL_PREFIX}-tmp-{uuid.uuid4().hex}"
        try:
            temporary.write_text(json.dumps(index, sort_keys=True), encoding="utf-8")
            os.replace(temporary, self.root / INDEX_NAME)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise PipeError(f"cannot write the index of {self.root}: {exc}") from exc


class LocalCenter:
    """The central store as a directory: ``<root>/<model>/<version>/<files>``."""

    def __init__(self, root: Path, model_name: str, version: str) -> None:
        self.root = root
        self.filerepo: Path | str = root / model_name
        self.dir: Path | str = root / model_name / version
        self._folder = VersionFolder(root / model_name / version)
        try:
            self._folder.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PipeError(f"cannot create {self._folder.root}: {exc}", str(self.dir)) from exc

    def describe(self) -> dict[str, str | None]:
        return {"filereporoot": str(self.root), "server": None}

    def attributes(self) -> list[FileAttributes]:
        return self._folder.attributes()

    def store(self, files: list[tuple[Path, str]], progress: Progress | None) -> None:
        targets = [local_target(self._folder.root, name) for _, name in files]
        for (source, name), target in zip(files, targets, strict=True):
            try:
                sha256 = copy_file(source, target, progress)
            except OSError as exc:
                raise PipeError(f"cannot import {source} as {name}: {exc}", name) from exc
            self._folder.remember(name, sha256)

    def fetch(self, files: list[tuple[str, Path]], progress: Progress | None) -> None:
        for name, target in files:
            try:
                copy_file(local_target(self._folder.root, name), target, progress)
            except OSError as exc:
                raise PipeError(f"cannot pull {name} to {target}: {exc}", name) from exc

    def delete(self, name: str) -> None:
        path = local_target(self._folder.root, name)
        path.unlink()
        folder = path.parent
        while folder != self._folder.root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
        self._folder.forget([name])


class Center(Protocol):
    """Where a pipe's files live: a directory (:class:`LocalCenter`) or the file store
    service (:class:`modelcloud.pipe._remote.RemoteCenter`)."""

    filerepo: Path | str
    dir: Path | str

    def describe(self) -> dict[str, str | None]: ...
    def attributes(self) -> list[FileAttributes]: ...
    def store(self, files: list[tuple[Path, str]], progress: Progress | None) -> None: ...
    def fetch(self, files: list[tuple[str, Path]], progress: Progress | None) -> None: ...
    def delete(self, name: str) -> None: ...
