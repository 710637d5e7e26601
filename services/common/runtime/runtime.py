"""One runtime for every service: its parts are declared once, started in order and
stopped in reverse (also when start-up fails half way), with the database and the broker
allowed to be away at start.

A service's ``create_app`` hands :func:`service_lifespan` a *declare* function. At start-up
it builds the service's objects (nothing connects yet), declares its parts on the
:class:`ServiceRuntime` and returns the service's typed state (read by request handlers through
:func:`~services.common.runtime.state.state_of`). Then each part starts once the parts it
needs are up; a part whose start fails and may retry (the database, the event bus) is tried
again in the background with backoff while the app already answers, ``/readyz`` naming
every part that is not up.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import structlog
from fastapi import FastAPI

from services.common.database import create_engine
from services.common.events.bus import EventBus, Handler
from services.common.migrations import upgrade
from services.common.runtime.backoff import Backoff
from services.common.runtime.database import DATABASE, Database
from services.common.runtime.parts import LiveCheck, Part, describe, in_full
from services.common.runtime.state import set_service_state
from services.common.runtime.workers import Run, Worker
from services.common.web import add_readiness_check

EVENT_BUS = "event-bus"
S = TypeVar("S")
log = structlog.get_logger("modelcloud.runtime")


class ServiceRuntime:
    """The parts of one service, in the order they start."""

    def __init__(self, service: str, *, backoff: Backoff | None = None, steady_s: float = 10.0):
        self.service = service
        self.backoff = backoff or Backoff()
        self.steady_s = steady_s
        self.parts: dict[str, Part] = {}
        self._bus: EventBus | None = None
        self._bus_shared = False
        self._background: set[asyncio.Task[None]] = set()
        self._made: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    # ------------------------------------------------------------------ declaring parts

    def part(
        self,
        name: str,
        start: Callable[[AsyncExitStack], Awaitable[None]],
        *,
        needs: Sequence[str] = (),
        retry: bool = False,
        live: LiveCheck | None = None,
    ) -> Part:
        """The general form: ``start`` starts it and pushes its stop onto the stack."""
        if name in self.parts:
            raise ValueError(f"a part named {name!r} is declared twice")
        unknown = [need for need in needs if need not in self.parts]
        if unknown:  # declared first, so the order of declaration is an order of start
            raise ValueError(f"{name!r} needs parts not declared before it: {unknown}")
        part = Part(name, start, tuple(needs), retry, live)
        self.parts[name] = part
        return part

    def step(
        self,
        name: str,
        start: Callable[[], Awaitable[object]] | None = None,
        *,
        stop: Callable[[], Awaitable[object]] | None = None,
        needs: Sequence[str] = (),
        retry: bool = False,
        live: LiveCheck | None = None,
    ) -> Part:
        """Await ``start`` at start-up and ``stop`` at shut-down (if it started); ``live``
        checks, once it is up, that it still is (for ``/readyz``)."""

        async def run(stack: AsyncExitStack) -> None:
            if start is not None:
                await start()
            if stop is not None:
                stack.push_async_callback(_stopping, name, stop)

        return self.part(name, run, needs=needs, retry=retry, live=live)

    def closing(self, name: str, close: Callable[[], Awaitable[object]]) -> Part:
        """Something already made (an HTTP client, a connection pool) closed at shut-down,
        or by :meth:`abandon` when the declaration fails before the parts run."""
        self._made.append((name, close))
        return self.step(name, stop=close)

    async def abandon(self) -> None:
        """Close what the declaration made before it failed (no part has started)."""
        for name, close in reversed(self._made):
            await _stopping(name, close)

    def context(
        self,
        name: str,
        make: Callable[[], AbstractAsyncContextManager[Any]],
        *,
        needs: Sequence[str] = (),
        retry: bool = False,
    ) -> Part:
        """An async context manager entered at start-up and left at shut-down."""

        async def run(stack: AsyncExitStack) -> None:
            await stack.enter_async_context(make())

        return self.part(name, run, needs=needs, retry=retry)

    def database(self, url: str, *, migrations: Path | None) -> Database:
        """The ``database`` part: the service's migrations applied (under a lock, so
        replicas starting together apply them once), retried while the database is away."""
        engine = create_engine(url)
        # Disposed last, whether or not the database ever came up.
        self.closing("engine", engine.dispose)

        async def start(stack: AsyncExitStack) -> None:
            if migrations is not None:
                await upgrade(engine, migrations)
            else:
                await database.ping()

        part = self.part(DATABASE, start, needs=("engine",), retry=True)
        database = Database(engine, part)
        part.live = database.ping
        return database

    def event_bus(self, bus: EventBus, *, shared: bool) -> Part:
        """The ``event-bus`` part, retried while the broker is away. A ``shared`` bus (the
        all-in-one platform's) is started and closed by its owner: here only joined."""
        self._bus, self._bus_shared = bus, shared

        async def start(stack: AsyncExitStack) -> None:
            await bus.start()  # safe on a bus already started
            if not shared:
                stack.push_async_callback(_stopping, EVENT_BUS, bus.close)

        # Up once started, then as connected as the bus says (a broker lost later).
        return self.part(EVENT_BUS, start, retry=True, live=bus.ready)

    def subscription(
        self,
        queue: str,
        patterns: Sequence[str],
        handler: Handler,
        *,
        max_deliveries: int = 5,
        needs: Sequence[str] = (),
    ) -> Part:
        """Consume ``queue`` once the bus, the database (if the service has one) and
        ``needs`` (what the handler works with) are up."""
        bus, shared = self._bus, self._bus_shared
        if bus is None:
            raise ValueError("declare the event bus before its subscriptions")

        async def start(stack: AsyncExitStack) -> None:
            await bus.subscribe(queue, patterns, handler, max_deliveries=max_deliveries)
            if shared:  # a shared bus goes on without this service; an owned one closes
                stack.push_async_callback(_stopping, f"consumer-{queue}", bus.unsubscribe, queue)

        infrastructure = [EVENT_BUS, *([DATABASE] if DATABASE in self.parts else [])]
        return self.part(f"consumer-{queue}", start, needs=[*infrastructure, *needs], retry=True)

    def worker(self, name: str, run: Run, *, needs: Sequence[str] = ()) -> Part:
        """A background task, supervised: restarted with backoff when it crashes, cancelled
        at shut-down."""
        worker = Worker(name, run, backoff=self.backoff, steady_s=self.steady_s)

        async def start(stack: AsyncExitStack) -> None:
            task = asyncio.create_task(worker.supervise(), name=f"{self.service}-{name}")
            stack.push_async_callback(_cancel, task)

        return self.part(name, start, needs=needs, live=worker.check)

    # ------------------------------------------------------------------ running

    @contextlib.asynccontextmanager
    async def running(self, app: FastAPI | None = None) -> AsyncIterator[None]:
        """Start every part (those that cannot start yet go on in the background), and stop
        what started, in reverse, on the way out, whether start-up finished or not."""
        async with AsyncExitStack() as stack:
            try:
                for part in self.parts.values():
                    if app is not None:
                        add_readiness_check(app, part.name, part.check)
                    await self._start_or_defer(part, stack)
                yield
            finally:
                # What is still coming up stops first: it may need what the stack stops.
                for task in list(self._background):
                    task.cancel()
                for task in list(self._background):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _start_or_defer(self, part: Part, stack: AsyncExitStack) -> None:
        waiting = [need for need in part.needs if not self.parts[need].up.is_set()]
        if waiting:
            part.problem = f"waiting for {', '.join(waiting)}"
            self._in_background(part, stack, first_delay=None)
            return
        try:
            await self._start(part, stack)
        except Exception as exc:
            if not part.retry:
                log.exception("part failed to start", service=self.service, part=part.name)
                raise
            part.problem = describe(exc)
            delays = self.backoff.delays()
            delay = next(delays)
            log.warning(
                "part unavailable, starting without it",
                service=self.service,
                part=part.name,
                error=in_full(exc),
                retry_in_s=delay,
            )
            self._in_background(part, stack, first_delay=delay)

    def _in_background(self, part: Part, stack: AsyncExitStack, first_delay: float | None) -> None:
        task = asyncio.create_task(
            self._bring_up(part, stack, first_delay), name=f"{self.service}-start-{part.name}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bring_up(self, part: Part, stack: AsyncExitStack, first_delay: float | None) -> None:
        """Wait for what the part needs, then try it until it starts. A part that could not
        start in the background has nobody to fail to: it is retried like the others."""
        for need in part.needs:
            await self.parts[need].up.wait()
        delays = self.backoff.delays()
        if first_delay is not None:
            next(delays)
            await asyncio.sleep(first_delay)
        while True:
            try:
                await self._start(part, stack)
                return
            except Exception as exc:
                part.problem = describe(exc)
                delay = next(delays)
                log.warning(
                    "part unavailable, retrying",
                    service=self.service,
                    part=part.name,
                    error=in_full(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)

    async def _start(self, part: Part, stack: AsyncExitStack) -> None:
        await part.start(stack)
        part.problem = ""
        part.up.set()
        log.debug("part up", service=self.service, part=part.name)


def service_lifespan(
    service: str, declare: Callable[[ServiceRuntime], S], **options: Any
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifespan of a service's app: ``declare`` builds its state and parts, the
    runtime runs them, request handlers read the state."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(service, **options)
        try:
            state = declare(runtime)
        except BaseException:
            await runtime.abandon()
            raise
        set_service_state(app, state)
        async with runtime.running(app):
            yield

    return lifespan


async def _stopping(name: str, stop: Callable[..., Awaitable[object]], *args: object) -> None:
    # One part that cannot stop cleanly (a broker already gone) must not keep the parts
    # after it from stopping.
    try:
        await stop(*args)
    except Exception:
        log.exception("part did not stop cleanly", part=name)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
