"""A part of a service's runtime: something started at start-up and stopped at shut-down
(the database, the event bus, a subscription, a worker, an HTTP client...)."""

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from services.common.problems import ServiceUnavailable
from services.common.web import NotReady

# Starts the part and pushes what stops it onto the stack (only once it has started).
Start = Callable[[AsyncExitStack], Awaitable[None]]
LiveCheck = Callable[[], Awaitable[None]]


class PartDown(NotReady):
    """A part is not up (yet, or any more); the message says why, for ``/readyz``."""


@dataclass(eq=False)
class Part:
    """``needs`` names the parts that must be up before this one starts; ``retry``: a part
    whose start fails at start-up is tried again in the background (the broker or the
    database may come back) rather than failing the start-up."""

    name: str
    start: Start
    needs: tuple[str, ...] = ()
    retry: bool = False
    live: LiveCheck | None = None
    problem: str = "not started"
    up: asyncio.Event = field(default_factory=asyncio.Event)

    async def check(self) -> None:
        """The part's readiness: raises :class:`PartDown` while it is not up, then asks the
        part itself (a database that went away, a worker that is crashing)."""
        if not self.up.is_set():
            raise PartDown(self.problem)
        if self.live is not None:
            await self.live()

    def require(self) -> None:
        """For a request that cannot be served without this part: a 503 problem (the
        client may try again) while it is not up, never a 500."""
        if not self.up.is_set():
            raise ServiceUnavailable(f"the {self.name} is not available yet: {self.problem}")


def describe(exc: BaseException) -> str:
    """What ``/readyz`` and a 503 say of an error: its kind only. ``/readyz`` answers
    anyone, and a message may carry SQL, its parameters or a project's name: that goes to
    the logs (:func:`in_full`)."""
    return type(exc).__name__


def in_full(exc: BaseException) -> str:
    """One line for the logs: the kind of error and its message, bounded."""
    return f"{type(exc).__name__}: {exc}"[:300]
