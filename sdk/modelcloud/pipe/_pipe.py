"""The seed's model-file API (Tutorial 0 of seed 004), modelled on d6tpipe::

    from modelcloud.pipe import ModelFile, list_profiles, APILocal   # or: from bolt4ds.pipe

    pipe = ModelFile(model_name="model_name", version="model_version", center_path=None).filepipe()
    pipe.import_file("model.db", subdir=None, move=False)
    pipe.import_dir("local_model_workspace", subdir=None, move=False)
    pipe.scan_local(include="*.py", sortby="mod", attributes=True)
    pipe.pull_file("center_file", "model_workspace_path")
    pipe.pull_dir("model_workspace_path")
    pipe.delete_files_local(files=["model_files"], confirm=False, delete_all=None,
                            ignore_errors=False)
    APILocal(profile="model_name", filecfg="/your/path/cfg.json").list_local_pipes()
    list_profiles()

With ``center_path`` set, the central store is that directory (a shared mount works); with
``None`` it is the one configured for the user (``MODELCLOUD_CENTER``, else
``~/.modelcloud/center``).
"""

import fnmatch
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from modelcloud.pipe._center import Center, FileAttributes, LocalCenter, sha256_of
from modelcloud.pipe._paths import local_target, safe_component, safe_relative
from modelcloud.pipe._remote import RemoteCenter, list_remote
from modelcloud.pipe.errors import PipeError, PipeFileNotFound, UnsafePath

SortBy = Literal["name", "mod", "size"]
_PROGRESS_FROM_BYTES = 32 << 20


def default_center(filecfg: str | os.PathLike[str] | None = None) -> Path:
    """The central directory: ``filecfg``'s ``center_path``, ``MODELCLOUD_CENTER``, or
    ``~/.modelcloud/center``."""
    config = _read_config(filecfg) if filecfg is not None else {}
    if config.get("center_path"):
        return Path(str(config["center_path"])).expanduser()
    configured = os.environ.get("MODELCLOUD_CENTER")
    return Path(configured).expanduser() if configured else Path.home() / ".modelcloud" / "center"


def _read_config(filecfg: str | os.PathLike[str]) -> dict[str, Any]:
    """A pipe configuration file: JSON with ``center_path``, or ``server``/``project``/``token``."""
    try:
        config = json.loads(Path(filecfg).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipeError(
            f"cannot read the pipe configuration {filecfg}: {exc}", str(filecfg)
        ) from exc
    if not isinstance(config, dict):
        raise PipeError(f"the pipe configuration {filecfg} must be a JSON object", str(filecfg))
    return config


class ModelFile:
    """A model name and version in the central store (model name and version: letters,
    digits, '.', '_' and '-').

    The store is the ``center_path`` directory when given; otherwise the platform's file
    store when one is configured (``server`` or ``MODELCLOUD_FILESTORE_URL``, with
    ``MODELCLOUD_TOKEN`` and the owning registry ``project`` or ``MODELCLOUD_PROJECT``);
    otherwise the user's default directory.
    """

    def __init__(
        self,
        model_name: str,
        version: str,
        center_path: str | os.PathLike[str] | None = None,
        *,
        server: str | None = None,
        project: str | None = None,
        token: str | None = None,
        quiet: bool = False,
    ) -> None:
        self.model_name = safe_component(model_name, "model name")
        self.version = safe_component(version, "version")
        self.center_path = Path(center_path).expanduser() if center_path else None
        self.server = server or (
            None if center_path else os.environ.get("MODELCLOUD_FILESTORE_URL")
        )
        self.project = project or os.environ.get("MODELCLOUD_PROJECT")
        self.token = token or os.environ.get("MODELCLOUD_TOKEN")
        self.quiet = quiet

    def filepipe(self) -> "FilePipe":
        """The pipe of this model version, created in the center if it is new."""
        center: Center
        if self.server:
            if not self.project:
                raise PipeError(
                    "name the registry project that owns these files: "
                    "ModelFile(..., project=...) or MODELCLOUD_PROJECT"
                )
            center = RemoteCenter(
                self.server, self.token, self.project, self.model_name, self.version
            )
        else:
            root = self.center_path or default_center()
            center = LocalCenter(root, self.model_name, self.version)
        return FilePipe(center, self.model_name, self.version, quiet=self.quiet)


class FilePipe:
    """Push files of one model version to the center and pull them back, git-style."""

    def __init__(
        self, center: "Center", model_name: str, version: str, *, quiet: bool = False
    ) -> None:
        self._center = center
        self.model_name = model_name
        self.version = version
        self.quiet = quiet

    @property
    def filerepo(self) -> Path | str:
        """The model's folder (or URL) in the center."""
        return self._center.filerepo

    @property
    def dir(self) -> Path | str:
        """The model version's folder (or URL) in the center."""
        return self._center.dir

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": f"{self.model_name}/{self.version}",
            "model_name": self.model_name,
            "version": self.version,
            "filerepo": str(self.filerepo),
            "dir": str(self.dir),
            "key": None,
            **self._center.describe(),
        }

    # ------------------------------------------------------------------ push

    def import_file(
        self, path: str | os.PathLike[str], subdir: str | None = None, move: bool = False
    ) -> str:
        """Copy (or, with ``move=True``, move) a local file into the center; returns its name
        there (``subdir/<file name>``). A symbolic link named here is followed: the file it
        leads to is the one asked for."""
        source = Path(path)
        if not source.is_file():
            raise PipeFileNotFound(f"no such file to import: {source}", str(source))
        name = safe_relative(f"{subdir}/{source.name}" if subdir else source.name)
        with self._progress(source.stat().st_size) as advance:
            self._center.store([(source, name)], advance)
        if move:
            source.unlink()
        return name

    def import_dir(
        self, path: str | os.PathLike[str], subdir: str | None = None, move: bool = False
    ) -> list[str]:
        """Copy (or move) every file under a local folder into the center, keeping their
        relative paths (under ``subdir`` when given); returns the names stored.

        A symbolic link to a file inside the folder is imported as that file; a link that
        leads outside the folder refuses the whole import (:class:`UnsafePath`, naming
        it) before anything is sent, so a folder cannot carry out a file it does not hold.
        Links to folders are not followed."""
        source = Path(path)
        if not source.is_dir():
            raise PipeFileNotFound(f"no such folder to import: {source}", str(source))
        inside = source.resolve()
        files = []
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = file.relative_to(source).as_posix()
            name = safe_relative(f"{subdir}/{relative}" if subdir else relative)
            if file.is_symlink() and not file.resolve().is_relative_to(inside):
                raise UnsafePath(
                    f"{file} is a link to {file.resolve()}, outside {source}; nothing was "
                    "imported (copy the file into the folder to import it)",
                    name,
                )
            files.append((file, name))
        with self._progress(sum(p.stat().st_size for p, _ in files)) as advance:
            self._center.store(files, advance)
        if move:
            shutil.rmtree(source)
        return [name for _, name in files]

    # ------------------------------------------------------------------ look

    def scan_local(
        self,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        sortby: SortBy = "name",
        attributes: bool = False,
        files: Iterable[str] | None = None,
    ) -> tuple[list[dict[str, Any]], list[str]] | list[str]:
        """The files of this version in the center.

        ``include``/``exclude`` are glob patterns matched against the name and its last
        part; ``sortby`` is ``'name'``, ``'mod'`` (modification time) or ``'size'``. With
        ``attributes=True`` returns ``(list of {'filename', 'modified_at', 'size', 'crc'},
        list of names)``, ``crc`` being the file's SHA-256 (hex); otherwise the list of names.
        """
        if sortby not in ("name", "mod", "size"):
            raise PipeError(f"sortby must be 'name', 'mod' or 'size', not {sortby!r}")
        found = [a for a in self._center.attributes() if _selected(a.name, include, exclude, files)]
        keys = {"name": lambda a: a.name, "mod": lambda a: a.mtime_ns, "size": lambda a: a.size}
        found.sort(key=keys[sortby])
        names = [a.name for a in found]
        if not attributes:
            return names
        return [_as_dict(a) for a in found], names

    # ------------------------------------------------------------------ pull

    def pull_file(self, name: str, local_path: str | os.PathLike[str]) -> Path:
        """Copy one center file to ``local_path`` (a folder, or the file path to write);
        nothing is copied when the local copy is already identical."""
        clean = safe_relative(name)
        known = {a.name: a for a in self._center.attributes()}
        if clean not in known:
            raise PipeFileNotFound(f"{clean} is not in {self.model_name}/{self.version}", clean)
        target = Path(local_path)
        if target.is_dir() or str(local_path).endswith(("/", os.sep)):
            target = local_target(target, clean)
        self._pull({clean: target}, known)
        return target

    def pull_dir(self, local_path: str | os.PathLike[str]) -> list[str]:
        """Bring a local folder up to date with this version: only new or changed files
        are copied; returns their names.

        Every name is checked before anything is written: one that would leave the folder
        (``..``, absolute, a drive) or pass through a symbolic link in it refuses the pull
        with :class:`UnsafePath` naming the file."""
        root = Path(local_path)
        known = {a.name: a for a in self._center.attributes()}
        return self._pull({name: local_target(root, name) for name in known}, known)

    def _pull(self, targets: dict[str, Path], known: dict[str, FileAttributes]) -> list[str]:
        changed = [
            known[name] for name, target in targets.items() if not _same(known[name], target)
        ]
        with self._progress(sum(a.size for a in changed)) as advance:
            self._center.fetch([(a.name, targets[a.name]) for a in changed], advance)
        for attributes in changed:
            mtime = attributes.mtime_ns
            os.utime(targets[attributes.name], ns=(mtime, mtime))
        return [a.name for a in changed]

    # ------------------------------------------------------------------ delete

    def delete_files_local(
        self,
        files: Iterable[str] | None = None,
        confirm: bool = True,
        delete_all: bool | None = None,
        ignore_errors: bool = False,
    ) -> list[str]:
        """Delete files of this version from the center; ``delete_all=True`` deletes every
        file. ``confirm=True`` asks first; the seed passes ``confirm=False``."""
        present = {a.name for a in self._center.attributes()}
        if delete_all:
            names = sorted(present)
        elif files is None:
            raise PipeError("name the files to delete, or pass delete_all=True")
        else:
            names = [safe_relative(name) for name in ([files] if isinstance(files, str) else files)]
        if confirm and names and not _confirmed(names, self.model_name, self.version):
            return []
        deleted = []
        for name in names:
            if name not in present:
                if ignore_errors:
                    continue
                raise PipeFileNotFound(f"{name} is not in {self.model_name}/{self.version}", name)
            self._center.delete(name)
            deleted.append(name)
        return deleted

    # ------------------------------------------------------------------ progress

    @contextmanager
    def _progress(self, total: int) -> Iterator[Any]:
        if self.quiet or total < _PROGRESS_FROM_BYTES or not sys.stderr.isatty():
            yield None
            return
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task(f"{self.model_name}/{self.version}", total=total)
            yield lambda n: progress.advance(task, n)


class APILocal:
    """The versions of one model (a *profile*) in the center: the file store when one is
    configured (``filecfg``'s ``server``/``project``/``token``, or the ``MODELCLOUD_*``
    variables), else the central directory (``filecfg``'s ``center_path``, ...)."""

    def __init__(self, profile: str, filecfg: str | os.PathLike[str] | None = None) -> None:
        self.profile = safe_component(profile, "model name")
        self.remote = _remote_settings(filecfg)
        self.center = default_center(filecfg)

    def list_local_pipes(self) -> list[str]:
        if self.remote is not None:
            server, project, token = self.remote
            path = f"/v1/projects/{quote(project)}/models/{quote(self.profile)}/versions"
            return list_remote(server, token, path)
        return _versions(self.center / self.profile)


def list_profiles(
    center_path: str | os.PathLike[str] | None = None,
    filecfg: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every model in the center, each with where its files are and its versions."""
    remote = None if center_path else _remote_settings(filecfg)
    if remote is not None:
        server, project, token = remote
        models = f"/v1/projects/{quote(project)}/models"
        return {
            model: {
                "filerepo": f"{server}{models}/{model}",
                "filereporoot": server,
                "server": server,
                "filedb": None,
                "key": None,
                "versions": list_remote(server, token, f"{models}/{quote(model)}/versions"),
            }
            for model in list_remote(server, token, models)
        }
    center = Path(center_path).expanduser() if center_path else default_center(filecfg)
    if not center.is_dir():
        return {}
    return {
        folder.name: {
            "filerepo": str(folder),
            "filereporoot": str(center),
            "server": None,
            "filedb": None,
            "key": None,
            "versions": _versions(folder),
        }
        for folder in sorted(center.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }


def _remote_settings(filecfg: str | os.PathLike[str] | None) -> tuple[str, str, str | None] | None:
    """(server, project, token) of the file store, when one is configured."""
    config = _read_config(filecfg) if filecfg is not None else {}
    server = config.get("server") or os.environ.get("MODELCLOUD_FILESTORE_URL")
    if not server or config.get("center_path"):
        return None
    project = config.get("project") or os.environ.get("MODELCLOUD_PROJECT")
    if not project:
        raise PipeError("name the registry project of these files: MODELCLOUD_PROJECT")
    return str(server), str(project), config.get("token") or os.environ.get("MODELCLOUD_TOKEN")


def _versions(model_folder: Path) -> list[str]:
    if not model_folder.is_dir():
        return []
    return sorted(p.name for p in model_folder.iterdir() if p.is_dir() and p.name[0] != ".")


def _selected(
    name: str,
    include: str | Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    files: Iterable[str] | None,
) -> bool:
    def matches(patterns: str | Iterable[str]) -> bool:
        listed = [patterns] if isinstance(patterns, str) else list(patterns)
        base = name.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(base, p) for p in listed)

    if files is not None and name not in set(files):
        return False
    if include is not None and not matches(include):
        return False
    return not (exclude is not None and matches(exclude))


def _as_dict(attributes: FileAttributes) -> dict[str, Any]:
    return {
        "filename": attributes.name,
        "modified_at": datetime.fromtimestamp(attributes.mtime_ns / 1e9),
        "size": attributes.size,
        "crc": attributes.sha256,
    }


def _same(attributes: FileAttributes, target: Path) -> bool:
    if not target.is_file():
        return False
    stat = target.stat()
    if stat.st_size != attributes.size:
        return False
    return stat.st_mtime_ns == attributes.mtime_ns or sha256_of(target) == attributes.sha256


def _confirmed(names: list[str], model: str, version: str) -> bool:
    if not sys.stdin.isatty():
        raise PipeError("confirm=True needs a terminal to ask on; pass confirm=False to delete")
    answer = input(f"Delete {len(names)} files from {model}/{version}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")
