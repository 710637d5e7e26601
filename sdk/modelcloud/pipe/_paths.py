"""Names inside a pipe: relative POSIX paths that never leave the model version's folder."""

from pathlib import PurePosixPath

from modelcloud.pipe.errors import UnsafePath

INTERNAL_PREFIX = ".modelcloud"


def safe_relative(name: str, what: str = "file name") -> str:
    """``name`` as a clean relative POSIX path, or :class:`UnsafePath`."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePath(f"{what} must be a non-empty string", str(name))
    if "\x00" in name or "\\" in name:
        raise UnsafePath(f"{what} {name!r} contains a NUL byte or a backslash", name)
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafePath(f"{what} {name!r} points outside the pipe", name)
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"{what} {name!r} names no file", name)
    if parts[0].startswith(INTERNAL_PREFIX):
        raise UnsafePath(f"{what} {name!r} is reserved for the pipe itself", name)
    return "/".join(parts)


def safe_component(value: str, what: str) -> str:
    """A model name or version: one path component of letters, digits, '.', '_', '-'."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not value or not set(value) <= allowed or value in (".", "..") or value[0] == ".":
        raise UnsafePath(f"{what} {value!r} must be letters, digits, '.', '_' or '-'", value)
    return value
