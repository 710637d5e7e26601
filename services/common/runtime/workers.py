"""Supervised background workers: a crash is logged with its traceback and the worker is
started again with backoff; ``/readyz`` names it until it has run steadily again."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from services.common.runtime.backoff import Backoff
from services.common.runtime.parts import PartDown, describe

log = structlog.get_logger("modelcloud.runtime")

Run = Callable[[], Awaitable[None]]


class Worker:
    """``run`` is a loop meant to last until cancelled; one that returns is done (not
    restarted). After a crash the worker counts as unhealthy until its next run has lasted
    ``steady_s``, so ``/readyz`` does not flap between two quick crashes."""

    def __init__(self, name: str, run: Run, *, backoff: Backoff, steady_s: float) -> None:
        self.name = name
        self._run = run
        self._backoff = backoff
        self._steady_s = steady_s
        self._crash: str | None = None
        self._restarted_at: float | None = None
        self.crashes = 0

    async def supervise(self) -> None:
        """Run the worker until cancelled (a cancellation is a stop, not a crash)."""
        delays = self._backoff.delays()
        while True:
            started = time.monotonic()
            try:
                await self._run()
            except Exception as exc:
                self.crashes += 1
                self._crash = describe(exc)
                self._restarted_at = None
                if time.monotonic() - started >= self._steady_s:
                    delays = self._backoff.delays()  # it had run well: start the waits over
                delay = next(delays)
                log.exception("worker crashed", worker=self.name, restart_in_s=delay)
                await asyncio.sleep(delay)
                self._restarted_at = time.monotonic()
                log.info("worker restarted", worker=self.name, crashes=self.crashes)
                continue
            log.info("worker finished", worker=self.name)
            return

    async def check(self) -> None:
        if self._crash is None:
            return
        if self._restarted_at is None:
            raise PartDown(f"crashed, restarting: {self._crash}")
        if time.monotonic() - self._restarted_at < self._steady_s:
            raise PartDown(f"restarted after a crash: {self._crash}")
        self._crash = None
