"""How long to wait before the next try: doubling from ``first_s`` up to ``max_s``."""

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """0.5 s, 1 s, 2 s ... then every 10 s: a broker or database that comes back is found
    within ten seconds, and one that stays away costs a log line every ten seconds."""

    first_s: float = 0.5
    max_s: float = 10.0

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)
