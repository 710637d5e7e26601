"""What a stored file may be called: a relative path whose parts are plain names.

Blobs are stored by content, so a name never reaches a filesystem path; still, anything a
client could mean as a way out (``..``, absolute paths, backslashes, NUL, percent-encoded
or double-encoded dots) is refused outright rather than stored as a confusing key.
"""

import re

from services.common.problems import InvalidInput

_ENCODED = re.compile(r"%[0-9a-fA-F]{2}")
MAX_PATH = 1024


def check_file_path(path: str) -> str:
    problem = _problem(path)
    if problem:
        raise InvalidInput("path", problem)
    return path


def _problem(path: str) -> str | None:
    if not path or len(path) > MAX_PATH:
        return f"must be 1-{MAX_PATH} characters"
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        return "must not contain NUL or control characters"
    if "\\" in path:
        return "must use '/' between folders, not backslashes"
    if _ENCODED.search(path):
        return "must not contain percent-encoded characters"
    if path.startswith("/"):
        return "must be relative, not absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "must not contain empty, '.' or '..' parts"
    return None
