"""The pipe's memory of file digests: trusted only for files unchanged since."""

import os
import time
from pathlib import Path

from modelcloud.pipe._digests import DigestCache


def settled(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def test_an_unchanged_file_is_known_and_a_changed_one_is_not(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "cache" / "digests.sqlite3")
    weights = settled(tmp_path / "w.bin", b"weights")
    assert cache.known(weights) is None
    cache.remember([(weights, "a" * 64)])
    assert cache.known(weights) == "a" * 64
    # Same size, same modification time, other bytes: the change time gives it away.
    stat = weights.stat()
    weights.write_bytes(b"WEIGHTS")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.known(weights) is None
    cache.close()
    # Remembered across pipes (a new process would read the same file).
    reopened = DigestCache(tmp_path / "cache" / "digests.sqlite3")
    other = settled(tmp_path / "other.bin", b"x")
    reopened.remember([(other, "b" * 64)])
    assert DigestCache(tmp_path / "cache" / "digests.sqlite3").known(other) == "b" * 64


def test_a_file_modified_just_now_is_not_remembered(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "digests.sqlite3")
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"still being written?")
    cache.remember([(fresh, "c" * 64)])
    assert cache.known(fresh) is None


def test_a_cache_that_cannot_be_written_is_no_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cache = DigestCache(blocker / "digests.sqlite3")
    weights = settled(tmp_path / "w.bin", b"weights")
    cache.remember([(weights, "a" * 64)])
    assert cache.known(weights) is None
