"""The SHA-256 of local files, remembered by path, size, times and inode (as git's index
and DVC's state database do), so that pushing an unchanged folder does not read it again,
and a large file pushed once is known the next time without being read first.

The cache is a convenience: any trouble with it (a read-only home, a damaged file) makes
the pipe hash the file again, never fail. An entry is trusted only for a file last
modified well before it was recorded, so a file still being written is hashed again.
"""

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

_SETTLED_NS = 2_000_000_000  # a file modified within the last 2 s may still be changing


def _default_location() -> Path:
    configured = os.environ.get("MODELCLOUD_PIPE_DIGESTS")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".modelcloud" / "pipe" / "digests.sqlite3"


class DigestCache:
    def __init__(self, location: Path | None = None) -> None:
        self._location = location or _default_location()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def _connection(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken:
            try:
                self._location.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self._location, check_same_thread=False, timeout=5)
                db.execute(
                    "CREATE TABLE IF NOT EXISTS digest (path TEXT PRIMARY KEY, size INTEGER,"
                    " mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)"
                )
                self._db = db
            except (OSError, sqlite3.Error):
                self._broken = True
        return self._db

    def known(self, path: Path) -> str | None:
        """The file's digest if it is unchanged since it was recorded."""
        stat = path.stat()
        with self._lock, contextlib.suppress(sqlite3.Error):
            db = self._connection()
            if db is None:
                return None
            row = db.execute(
                "SELECT sha256 FROM digest WHERE path = ? AND size = ? AND mtime_ns = ?"
                " AND ctime_ns = ? AND inode = ?",
                (str(path.resolve()), *_identity(stat)),
            ).fetchone()
            return None if row is None else str(row[0])
        return None

    def remember(self, entries: list[tuple[Path, str]]) -> None:
        now = time.time_ns()
        rows = []
        for path, sha256 in entries:
            with contextlib.suppress(OSError):
                stat = path.stat()
                if stat.st_mtime_ns < now - _SETTLED_NS:
                    rows.append((str(path.resolve()), *_identity(stat), sha256))
        if not rows:
            return
        with self._lock, contextlib.suppress(sqlite3.Error):
            db = self._connection()
            if db is not None:
                with db:
                    db.executemany("INSERT OR REPLACE INTO digest VALUES (?, ?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino
