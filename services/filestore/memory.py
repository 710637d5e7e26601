"""Keeping the file store's memory flat while large files pass through it.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB); after that,
multi-MiB part buffers come from per-thread heaps that are not given back, and the peak
memory of an upload grows with the file's size (measured: +100 MiB for 2 GiB). A fixed
threshold keeps such buffers in mmap, returned to the system as soon as they are freed.
"""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
_M_MMAP_THRESHOLD = -3


def return_large_buffers(threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done
