"""CPU seconds per 2 GiB of the checksums a push can compute (issue 4): SHA-256 (the content
address and the pipe's ``crc``), MD5 (d6tpipe's ``crc``) and CRC32 (each part of a direct
upload). The data is 8 MiB of random bytes held in memory, hashed until 512 MiB have gone
through, so no disk read is counted; the figure is scaled to 2 GiB.

Run: ``.venv/bin/python bench/hashing.py``
"""

import hashlib
import os
import platform
import time
import zlib
from collections.abc import Callable

_PART = os.urandom(8 << 20)
_PASSES = 64  # 512 MiB


def _cpu_s_per_2gib(hash_all: Callable[[], object]) -> float:
    started = time.process_time()
    hash_all()
    return (time.process_time() - started) * (2048 / (_PASSES * 8))


def _digest(new: Callable[[], "hashlib._Hash"]) -> Callable[[], object]:
    def run() -> object:
        digest = new()
        for _ in range(_PASSES):
            digest.update(_PART)
        return digest.hexdigest()

    return run


def _crc32() -> object:
    crc = 0
    for _ in range(_PASSES):
        crc = zlib.crc32(_PART, crc)
    return crc


def main() -> None:
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; CPU s per 2 GiB"
    )
    for name, run in [
        ("sha256", _digest(hashlib.sha256)),
        ("md5", _digest(lambda: hashlib.md5(usedforsecurity=False))),
        ("crc32", _crc32),
    ]:
        print(f"{name}: {_cpu_s_per_2gib(run):.2f}")


if __name__ == "__main__":
    main()
