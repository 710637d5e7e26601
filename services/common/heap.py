"""The garbage collector, tuned for a long-running service.

What a service builds to start (its apps, schemas, pydantic models, SQLAlchemy metadata,
connection pools) lives as long as the process. Left in the collector's generations, every
full collection walks all of it: measured on the embedded platform, pauses of a hundred
milliseconds and more under load (the gateway's p99 at 16 callers: 130 ms, 15 ms once
frozen; ``bench/gateway.py``). Frozen after start-up, collections only see what requests
allocate. A larger first generation also means fewer collections of short-lived objects.
"""

import gc

FIRST_GENERATION = 50_000  # allocations between young collections (CPython's default: 700)


def settle_after_startup() -> None:
    """Collect what start-up left behind, then keep the rest out of later collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(FIRST_GENERATION, 50, 100)
