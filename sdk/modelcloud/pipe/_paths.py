"""Names inside a pipe: relative POSIX paths that never leave the model version's folder,
and the local paths they map to, which never pass through a symbolic link."""

from pathlib import Path, PurePosixPath, PureWindowsPath

from modelcloud.pipe.errors import UnsafePath

INTERNAL_PREFIX = ".modelcloud"


def safe_relative(name: str, what: str = "file name") -> str:
    """``name`` as a clean relative POSIX path, or :class:`UnsafePath`."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePath(f"{what} must be a non-empty string", str(name))
    if "\x00" in name or "\\" in name:
        raise UnsafePath(f"{what} {name!r} contains a NUL byte or a backslash", name)
    path = PurePosixPath(name)
    # A drive (`C:x`) means nothing on POSIX but leaves the folder on Windows.
    if path.is_absolute() or ".." in path.parts or PureWindowsPath(name).drive:
        raise UnsafePath(f"{what} {name!r} points outside the pipe", name)
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"{what} {name!r} names no file", name)
    if parts[0].startswith(INTERNAL_PREFIX):
        raise UnsafePath(f"{what} {name!r} is reserved for the pipe itself", name)
    return "/".join(parts)


def local_target(root: Path, name: str, what: str = "file name") -> Path:
    """Where the pipe file ``name`` lies under ``root``: refused with :class:`UnsafePath`
    when the name would leave ``root`` or when a folder or file on the way is a symbolic
    link, which would take the write (or delete) somewhere else."""
    clean = safe_relative(name, what)
    path = root
    for part in clean.split("/"):
        path = path / part
        if path.is_symlink():
            raise UnsafePath(
                f"{what} {clean!r}: {path} is a symbolic link; the pipe does not write "
                "through links",
                clean,
            )
    return path


def safe_component(value: str, what: str) -> str:
    """A model name or version: one path component of letters, digits, '.', '_', '-'."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not value or not set(value) <= allowed or value in (".", "..") or value[0] == ".":
        raise UnsafePath(f"{what} {value!r} must be letters, digits, '.', '_' or '-'", value)
    return value
