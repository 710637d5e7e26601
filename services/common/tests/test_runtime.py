"""The service runtime: parts start in order and stop in reverse (also after a failed
start), the app starts while the broker or the database is away and says so in /readyz,
crashed workers are logged and restarted, migrations run once under a lock."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import structlog
from fastapi import Depends, FastAPI
from sqlalchemy import exc as sa_exc
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import Envelope
from modelcloud_testing.serving import in_process
from services.common.events.bus import BusUnavailable, Handler
from services.common.runtime import Backoff, Database, ServiceRuntime, service_lifespan, state_of
from services.common.web import create_service_app

FAST = Backoff(first_s=0.01, max_s=0.05)


def app_of(declare: Callable[[ServiceRuntime], object], **options: Any) -> FastAPI:
    return create_service_app(
        service="test",
        version="0",
        description="",
        lifespan=service_lifespan("test", declare, **options),
        max_request_bytes=1 << 20,
    )


class Recorder:
    """Parts that write down when they start and stop."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def part(self, name: str) -> Callable[[], contextlib.AbstractAsyncContextManager[None]]:
        @contextlib.asynccontextmanager
        async def context() -> AsyncIterator[None]:
            self.events.append(f"start {name}")
            try:
                yield
            finally:
                self.events.append(f"stop {name}")

        return context


async def test_parts_start_in_order_and_stop_in_reverse() -> None:
    record = Recorder()

    def declare(runtime: ServiceRuntime) -> None:
        for name in ("database", "bus", "client"):
            runtime.context(name, record.part(name))

    async with in_process(app_of(declare)) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert record.events == ["start database", "start bus", "start client"]
    assert record.events[3:] == ["stop client", "stop bus", "stop database"]


async def test_a_start_that_fails_half_way_stops_what_had_started() -> None:
    record = Recorder()

    async def broken() -> None:
        raise RuntimeError("no such bucket")

    def declare(runtime: ServiceRuntime) -> None:
        runtime.context("database", record.part("database"))
        runtime.context("client", record.part("client"))
        runtime.step("blobs", broken)
        runtime.context("never", record.part("never"))

    app = app_of(declare)
    with pytest.raises(RuntimeError, match="no such bucket"):
        async with app.router.lifespan_context(app):
            pass
    assert record.events == ["start database", "start client", "stop client", "stop database"]


async def test_a_declaration_that_fails_closes_the_clients_it_made() -> None:
    closed: list[str] = []

    async def close_client() -> None:
        closed.append("client")

    def declare(runtime: ServiceRuntime) -> None:
        runtime.closing("client", close_client)
        raise ValueError("a setting the declaration refuses")

    app = app_of(declare)
    with pytest.raises(ValueError, match="refuses"):
        async with app.router.lifespan_context(app):
            pass
    assert closed == ["client"]


class FlakyBus:
    """A bus whose broker is away for the first ``failures`` connection attempts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.started = asyncio.Event()
        self.subscribed: list[str] = []
        self.closed = False

    async def start(self) -> None:
        if self.failures:
            self.failures -= 1
            raise BusUnavailable("connection refused")
        self.started.set()

    async def ready(self) -> None:
        if not self.started.is_set():
            raise BusUnavailable("not connected")

    async def close(self) -> None:
        self.closed = True

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        raise NotImplementedError

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: Handler, *, max_deliveries: int = 5
    ) -> None:
        assert self.started.is_set(), "subscribed before the bus was up"
        self.subscribed.append(queue)

    async def unsubscribe(self, queue: str) -> None:
        self.subscribed.remove(queue)


async def handler(envelope: Envelope) -> None:
    pass


async def test_a_bus_that_is_away_at_start_is_retried_and_its_consumers_follow() -> None:
    bus = FlakyBus(failures=3)
    consumer_up = asyncio.Event()

    async def mark() -> None:
        consumer_up.set()

    def declare(runtime: ServiceRuntime) -> None:
        runtime.event_bus(bus, shared=False)  # type: ignore[arg-type]  # a partial fake
        runtime.subscription("orders", ["#"], handler)
        runtime.step("after-consumer", mark, needs=["consumer-orders"])

    async with in_process(app_of(declare, backoff=Backoff(first_s=0.2, max_s=0.2))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        failing = ready.json()["failing"]
        assert failing["event-bus"] == "PartDown: BusUnavailable"  # the message: in the logs
        assert failing["consumer-orders"] == "PartDown: waiting for event-bus"
        await asyncio.wait_for(consumer_up.wait(), 5)
        assert bus.subscribed == ["orders"]
        assert (await client.get("/readyz")).status_code == 200
    assert bus.closed


async def test_a_crashed_worker_is_logged_restarted_and_named_in_readyz() -> None:
    runs = 0
    second_run = asyncio.Event()
    forever = asyncio.Event()

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("bad row")
        second_run.set()
        await forever.wait()

    def declare(runtime: ServiceRuntime) -> None:
        runtime.worker("collector", work)

    # A long first wait: /readyz is read while the worker waits to be restarted.
    with structlog.testing.capture_logs() as logs:
        app = app_of(declare, backoff=Backoff(first_s=0.3, max_s=0.3), steady_s=60)
        async with in_process(app) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            failing = ready.json()["failing"]["collector"]
            assert "ValueError" in failing
            assert "bad row" not in failing  # /readyz answers anyone: the message is logged
            await asyncio.wait_for(second_run.wait(), 5)
            # Restarted, but not yet steady: still named.
            assert "collector" in (await client.get("/readyz")).json()["failing"]
    crashes = [entry for entry in logs if entry["event"] == "worker crashed"]
    assert len(crashes) == 1  # the cancellation at shut-down was no crash
    assert crashes[0]["worker"] == "collector"
    assert crashes[0]["exc_info"] is True  # log.exception: the traceback goes with it


async def test_a_worker_steady_again_is_no_longer_named() -> None:
    runs = 0
    second_run = asyncio.Event()

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("bad row")
        second_run.set()
        await asyncio.Event().wait()

    def declare(runtime: ServiceRuntime) -> None:
        runtime.worker("collector", work)

    async with in_process(app_of(declare, backoff=FAST, steady_s=0.05)) as client:
        await asyncio.wait_for(second_run.wait(), 5)

        async def ready_again() -> None:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.02)  # the worker's steady period is time itself

        await asyncio.wait_for(ready_again(), 5)


async def test_a_request_that_loses_the_database_gets_a_503_problem(tmp_path: Path) -> None:
    """The database went away after start: a refused connection is a 503 the client may
    retry; an error in the statement stays a 500."""

    def declare(runtime: ServiceRuntime) -> Database:
        return runtime.database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", migrations=None)

    async def session(
        state: Annotated[Database, Depends(state_of(Database))],
    ) -> AsyncIterator[AsyncSession]:
        async with state.session() as value:
            yield value

    app = app_of(declare)

    @app.get("/lost")
    async def lost(_: Annotated[AsyncSession, Depends(session)]) -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError(111, "refused"))

    @app.get("/broken")
    async def broken(_: Annotated[AsyncSession, Depends(session)]) -> None:
        raise sa_exc.OperationalError("SELECT x", {}, Exception("no such column: x"))

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app, raise_app_exceptions=False), base_url="http://t"
        ) as client,
    ):
        lost_answer = await client.get("/lost")
        assert lost_answer.status_code == 503
        assert lost_answer.headers["content-type"] == "application/problem+json"
        assert "database" in lost_answer.json()["detail"]
        assert (await client.get("/broken")).status_code == 500
