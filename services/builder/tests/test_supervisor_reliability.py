"""The supervisor and the build runner under trouble: a slow replica stop, a runtime that
raises, a database that fails for a moment. Each runs against a real SQLite database (the
builder's migrations) with a fake runtime, so a failure shows in seconds."""

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import structlog.testing
from docker.errors import APIError
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select

import services.builder
from modelcloud_proto.events import Envelope, OfflineRequested
from modelcloud_proto.specs import Device
from services.builder.backends.base import Artifact, BuildJob, LogLine, ReplicaSpec
from services.builder.builds.logs import BuildLogs
from services.builder.builds.models import Build, BuildState
from services.builder.builds.service import BuildRunner
from services.builder.consumers import BuilderConsumer
from services.builder.deployments.models import Deployment, DeploymentState, ReplicaRecord
from services.builder.deployments.supervisor import Supervisor
from services.builder.settings import BuilderSettings
from services.common.database import SessionFactory, create_engine, session_factory
from services.common.events.outbox import OutboxEvent
from services.common.migrations import upgrade
from services.common.runtime import Backoff, PartDown, ServiceRuntime

MIGRATIONS = Path(services.builder.__file__).resolve().parent / "migrations"


class FakeRuntime:
    """Replicas that are only names; a stop waits until the test lets it finish."""

    name = "venv"

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.stop_began = asyncio.Event()
        self.let_stop = asyncio.Event()
        self.let_stop.set()
        self.start_errors: list[Exception] = []
        self.exits_at_start = 0  # how many of the next replicas exit during setup
        self.alive_errors: list[Exception] = []
        self.started: list[str] = []

    async def start(self, replica: ReplicaSpec) -> str:
        if self.start_errors:
            raise self.start_errors.pop(0)
        handle = f"replica-{uuid4()}"
        if self.exits_at_start:
            self.exits_at_start -= 1
        else:
            self.live.add(handle)
        self.started.append(handle)
        return handle

    def alive(self, handle: str) -> bool:
        if self.alive_errors:
            raise self.alive_errors.pop(0)
        return handle in self.live

    async def stop(self, handle: str, grace_s: float = 10.0) -> None:
        self.stop_began.set()
        await self.let_stop.wait()
        self.live.discard(handle)

    def output(self, handle: str, lines: int) -> str | None:
        return "(exited)"

    def release(self) -> None:
        pass

    def running(self) -> dict[str, UUID]:
        return {}


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Path]]:
    path = tmp_path / "builder.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine, MIGRATIONS)
    yield engine, path
    await engine.dispose()


@pytest.fixture
def sessions(database: tuple[AsyncEngine, Path]) -> SessionFactory:
    return session_factory(database[0])


def settings_for(tmp_path: Path) -> BuilderSettings:
    return BuilderSettings(
        data_dir=tmp_path / "builder",
        health_timeout_s=5,
        health_interval_s=0.05,
        restart_backoff_max_s=0.1,
        stop_replicas_on_exit=True,
    )


async def make_supervisor(
    sessions: SessionFactory, runtime: FakeRuntime, tmp_path: Path
) -> Supervisor:
    supervisor = Supervisor(
        sessions=sessions,
        runtime=runtime,
        settings=settings_for(tmp_path),
        relay=None,
        logs=tmp_path / "replica-logs",
    )
    # Every replica answers /healthz: the fake's replicas have no port to ask.
    await supervisor._http.aclose()
    supervisor._http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(200))
    )
    return supervisor


async def add_deployment(
    sessions: SessionFactory, state: DeploymentState, handles: list[str]
) -> UUID:
    version_id = uuid4()
    now = datetime.now(UTC)
    async with sessions() as session:
        build = Build(
            version_id=version_id,
            project="vision",
            service="greeter",
            version="v1",
            bundle_sha256="0" * 64,
            device=Device.CPU,
            build_spec={},
            state=BuildState.SUCCEEDED,
            artifact={"code": "/nowhere"},
            created_at=now,
        )
        session.add(build)
        session.add(
            Deployment(
                version_id=version_id,
                project="vision",
                service="greeter",
                version="v1",
                build_id=build.id,
                desired_replicas=len(handles) or 1,
                port=0,
                device=Device.CPU,
                state=state,
                updated_at=now,
            )
        )
        for handle in handles:
            session.add(
                ReplicaRecord(
                    version_id=version_id,
                    handle=handle,
                    host="127.0.0.1",
                    port=45_000,
                    pool=Device.CPU,
                    started_at=now,
                )
            )
        await session.commit()
    return version_id


async def event_types(sessions: SessionFactory) -> list[str]:
    async with sessions() as session:
        return list((await session.exec(select(OutboxEvent.type))).all())


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    """The first true value of ``check()`` (the supervisor works in its own tasks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def write_meanwhile(path: Path) -> None:
    """Another writer of the database, as the builder's API or a consumer is: it waits
    half a second for the write lock, no more."""
    other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE deployment SET reason = 'written meanwhile'")
        other.execute("COMMIT")
    finally:
        other.close()


# ----------------------------------------------------------------------------- transactions


@pytest.mark.parametrize("moment", ["exit", "reconcile at start", "offline"])
async def test_a_slow_replica_stop_does_not_lock_the_database_for_other_writers(
    sessions: SessionFactory,
    database: tuple[AsyncEngine, Path],
    tmp_path: Path,
    moment: str,
) -> None:
    runtime = FakeRuntime()
    runtime.let_stop.clear()
    runtime.live.add("slow-replica")
    state = {
        "exit": DeploymentState.READY,
        "reconcile at start": DeploymentState.STOPPED,
        "offline": DeploymentState.STOPPING,
    }[moment]
    version_id = await add_deployment(sessions, state, ["slow-replica"])
    if moment == "reconcile at start":
        runtime.running = lambda: {"slow-replica": uuid4()}  # type: ignore[method-assign]
    supervisor = await make_supervisor(sessions, runtime, tmp_path)
    if moment == "exit":
        stopping = asyncio.create_task(supervisor.close())
    elif moment == "reconcile at start":
        stopping = asyncio.create_task(supervisor.start())
    else:
        supervisor.wake(version_id)
        stopping = asyncio.create_task(asyncio.sleep(0))
    try:
        await asyncio.wait_for(runtime.stop_began.wait(), 10)
        try:
            await asyncio.to_thread(write_meanwhile, database[1])
        except sqlite3.OperationalError as exc:
            pytest.fail(f"another writer failed while a replica was being stopped: {exc}")
    finally:
        runtime.let_stop.set()
        await stopping
    if moment != "exit":
        await eventually(lambda: _no_replicas(sessions))
        await supervisor.close()


async def _no_replicas(sessions: SessionFactory) -> bool:
    async with sessions() as session:
        return not (await session.exec(select(ReplicaRecord))).all()


# ----------------------------------------------------------------------------- surviving errors


async def test_a_replica_the_runtime_cannot_start_fails_the_deployment_with_the_error(
    sessions: SessionFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeRuntime()
    runtime.start_errors.append(
        FileNotFoundError(2, "No such file or directory", "/opt/envs/x/bin/python")
    )
    version_id = await add_deployment(sessions, DeploymentState.STARTING, [])
    supervisor = await make_supervisor(sessions, runtime, tmp_path)
    with caplog.at_level(logging.ERROR, logger="services.builder.deployments.supervisor"):
        supervisor.wake(version_id)
        await asyncio.wait_for(supervisor._tasks[version_id], 10)  # the watch ends, not dies
    async with sessions() as session:
        deployment = await session.get(Deployment, version_id)
    assert deployment is not None
    assert deployment.state is DeploymentState.FAILED
    assert deployment.reason is not None
    assert "No such file or directory" in deployment.reason
    assert "/opt/envs/x/bin/python" in deployment.reason
    assert "builder.deployment.failed" in await event_types(sessions)
    assert any(record.exc_info for record in caplog.records), "logged without its traceback"
    await supervisor.close()


async def test_a_watch_survives_an_engine_error_reports_it_then_goes_on_restarting(
    sessions: SessionFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeRuntime()
    runtime.live.add("first")
    version_id = await add_deployment(sessions, DeploymentState.READY, ["first"])
    supervisor = await make_supervisor(sessions, runtime, tmp_path)
    runtime.alive_errors += [APIError("500 Server Error: the engine did not answer")] * 3
    with caplog.at_level(logging.ERROR, logger="services.builder.deployments.supervisor"):
        supervisor.wake(version_id)
        problems = await eventually(lambda: _async(supervisor.problems()))
    assert problems[f"deployment-{version_id}"] == "APIError"
    assert any(
        r.exc_info and "the engine did not answer" in str(r.exc_info[1]) for r in caplog.records
    )

    await eventually(lambda: _async(not supervisor.problems()))
    runtime.live.discard("first")  # the replica dies: the watch is still there to see it
    await eventually(lambda: _has(sessions, "builder.replica.restarted"))
    assert len(runtime.started) == 1
    await supervisor.close()


class EngineDown(FakeRuntime):
    """An engine that fails every question about a replica until ``failing`` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def alive(self, handle: str) -> bool:
        if self.failing:
            raise APIError("500 Server Error: the engine did not answer")
        return super().alive(handle)


async def test_a_watch_that_keeps_failing_makes_the_builder_unready_naming_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.builder import main

    settings = settings_for(tmp_path)
    engine = create_engine(settings.sqlalchemy_url())
    await upgrade(engine, MIGRATIONS)
    version_id = await add_deployment(session_factory(engine), DeploymentState.READY, ["first"])
    await engine.dispose()
    runtime = EngineDown()
    runtime.live.add("first")
    monkeypatch.setattr(main, "_runtime_for", lambda settings, owner: runtime)
    app = main.create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b") as client,
    ):

        async def supervisor_named() -> Any:
            ready = await client.get("/readyz")
            failing = ready.json().get("failing", {})
            return (ready.status_code, failing["supervisor"]) if "supervisor" in failing else None

        status, problem = await eventually(supervisor_named)
        assert status == 503
        assert f"deployment-{version_id}" in problem
        assert "APIError" in problem

        runtime.failing = False  # the engine answers again: the builder is ready again

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready)


async def test_a_replacement_that_does_not_come_up_is_tried_again(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    runtime = FakeRuntime()
    version_id = await add_deployment(sessions, DeploymentState.READY, ["gone"])
    runtime.exits_at_start = 2  # the first two replacements exit during their setup
    supervisor = await make_supervisor(sessions, runtime, tmp_path)
    supervisor.wake(version_id)
    await eventually(lambda: _has(sessions, "builder.replica.restarted"))
    assert len(runtime.started) == 3
    async with sessions() as session:
        records = (await session.exec(select(ReplicaRecord))).all()
    assert [r.handle for r in records] == [runtime.started[-1]]  # no replica lost, none extra
    await supervisor.close()


@pytest.mark.parametrize("interruption", ["an error", "a crash"])
async def test_a_replacement_interrupted_before_its_swap_leaves_one_replica_per_port(
    sessions: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interruption: str
) -> None:
    runtime = FakeRuntime()
    version_id = await add_deployment(sessions, DeploymentState.READY, ["gone"])  # it died
    supervisor = await make_supervisor(sessions, runtime, tmp_path)
    # The fresh replica is up and recorded; what swaps it for the dead one is interrupted:
    # a database error (the watch retries) or the builder dying (a new one starts).
    swap_unit_of_work = supervisor._uow
    interrupted = asyncio.Event()

    def interrupt_once(session: Any) -> Any:
        if not interrupted.is_set():
            interrupted.set()
            if interruption == "a crash":
                raise asyncio.CancelledError  # ends the watch right here, as a kill would
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))
        return swap_unit_of_work(session)

    monkeypatch.setattr(supervisor, "_uow", interrupt_once)
    supervisor.wake(version_id)
    await asyncio.wait_for(interrupted.wait(), 10)
    if interruption == "a crash":
        with pytest.raises(asyncio.CancelledError):
            await supervisor._tasks[version_id]
        await supervisor._http.aclose()  # never closed: its replicas keep running
        supervisor = await make_supervisor(sessions, runtime, tmp_path)
        await supervisor.start()

    async def converged() -> list[ReplicaRecord] | None:
        async with sessions() as session:
            records = list((await session.exec(select(ReplicaRecord))).all())
        restarted = (await event_types(sessions)).count("builder.replica.restarted")
        running = {r.handle for r in records} == runtime.live
        return records if len(records) == 1 and running and restarted == 1 else None

    try:
        [record] = await eventually(converged, timeout=5)
    except AssertionError:
        async with sessions() as session:
            left = [(r.handle, r.port) for r in (await session.exec(select(ReplicaRecord))).all()]
        pytest.fail(f"did not converge: recorded {left}, running {sorted(runtime.live)}")
    assert record.handle == runtime.started[-1]
    assert record.restarts == 1
    await supervisor.close()


async def test_an_offline_request_during_a_failing_start_stops_the_deployment(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    version_id = await add_deployment(sessions, DeploymentState.STARTING, [])
    runtime = FakeRuntime()
    runtime.exits_at_start = 1  # its setup fails...
    supervisor = await make_supervisor(sessions, runtime, tmp_path)
    consumer = BuilderConsumer(runner=None, supervisor=supervisor)  # type: ignore[arg-type]
    offline = OfflineRequested(
        project="vision", service="greeter", version_id=version_id, version="v1"
    )
    started = runtime.start

    async def start_while_taken_offline(replica: ReplicaSpec) -> str:
        handle = await started(replica)
        # ...while the registry's offline request is applied, as the consumer applies it.
        async with sessions() as session:
            envelope = Envelope.of(offline, producer="registry")
            await consumer.apply(session, offline, envelope)
            await session.commit()
        return handle

    runtime.start = start_while_taken_offline  # type: ignore[method-assign]
    supervisor.wake(version_id)

    async def settled() -> Deployment | None:
        async with sessions() as session:
            deployment = await session.get(Deployment, version_id)
        done = deployment is not None and deployment.state is not DeploymentState.STOPPING
        return deployment if done and supervisor._tasks[version_id].done() else None

    deployment = await eventually(settled)
    assert deployment.state is DeploymentState.STOPPED, deployment.reason
    types = await event_types(sessions)
    assert "builder.deployment.stopped" in types
    assert "builder.deployment.failed" not in types
    assert not runtime.live
    await supervisor.close()


async def _async(value: Any) -> Any:
    return value


async def _has(sessions: SessionFactory, event_type: str) -> bool:
    return event_type in await event_types(sessions)


# ----------------------------------------------------------------------------- build runner


class FlakySessions:
    """The database refuses every session while ``failing`` (a restart, a full disk)."""

    def __init__(self, sessions: SessionFactory) -> None:
        self.sessions = sessions
        self.failing = True

    def __call__(self) -> Any:
        if self.failing:
            raise OperationalError(
                "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("disk I/O error")
            )
        return self.sessions()


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.built = asyncio.Event()

    async def build(self, job: BuildJob, log: LogLine) -> Artifact:
        log("installing nothing")
        self.built.set()
        return Artifact(backend=self.name, data={"code": str(job.source)})


class FakeBundles:
    async def fetch(
        self, *, project: str, service: str, version: str, sha256: str, into: Path
    ) -> Path:
        return into


async def test_a_build_runner_crashed_by_a_database_error_is_named_then_runs_the_stuck_build(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    async with sessions() as session:
        build = Build(
            version_id=uuid4(),
            project="vision",
            service="greeter",
            version="v1",
            bundle_sha256="0" * 64,
            device=Device.CPU,
            build_spec={},
            state=BuildState.RUNNING,  # cut short: the runner crashed, or the builder stopped
            created_at=datetime.now(UTC),
        )
        session.add(build)
        await session.commit()
    backend = FakeBackend()
    flaky = FlakySessions(sessions)
    runner = BuildRunner(
        sessions=flaky,  # type: ignore[arg-type]
        backend=backend,
        bundles=FakeBundles(),  # type: ignore[arg-type]
        logs=BuildLogs(tmp_path / "logs"),
        relay=None,
        scratch=tmp_path / "scratch",
    )
    # Run as the builder runs it (main.py): a worker of the service runtime.
    runtime = ServiceRuntime("builder", backoff=Backoff(first_s=0.01, max_s=0.05), steady_s=0.05)
    part = runtime.worker("build-runner", runner.run)

    async def named() -> str | None:
        try:
            await part.check()  # what /readyz asks the part
        except PartDown as down:
            return str(down)
        return None

    async def ready() -> bool:
        return await named() is None

    with structlog.testing.capture_logs() as logs:
        async with runtime.running():
            assert "OperationalError" in await eventually(named)
            assert not backend.built.is_set()
            flaky.failing = False  # the database is back
            await asyncio.wait_for(backend.built.wait(), 10)
            assert await eventually(lambda: _state(sessions, build.id, BuildState.SUCCEEDED))
            await eventually(ready)
    crashes = [entry for entry in logs if entry["event"] == "worker crashed"]
    assert crashes, "the crash was not logged"
    assert all(entry["worker"] == "build-runner" and entry["exc_info"] for entry in crashes)


async def _state(sessions: SessionFactory, build_id: UUID, state: BuildState) -> bool:
    async with sessions() as session:
        build = await session.get(Build, build_id)
        return build is not None and build.state is state


# ----------------------------------------------------------------------------- docker runtime


class SlowContainer:
    def __init__(self, handle: str, delay: float) -> None:
        self.id = handle
        self.status = "running"
        self.labels: dict[str, str] = {}
        self._delay = delay

    def stop(self, timeout: int) -> None:
        time.sleep(self._delay)
        self.status = "exited"

    def remove(self, force: bool) -> None:
        pass

    def logs(self, tail: int) -> bytes:
        return b""


class SlowContainers:
    """An engine that takes ``delay`` seconds to answer each request."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.known: dict[str, SlowContainer] = {}

    def list(self, **_: Any) -> list[SlowContainer]:
        time.sleep(self.delay)
        return list(self.known.values())

    def get(self, handle: str) -> SlowContainer:
        time.sleep(self.delay)
        return self.known[handle]


class SlowClient:
    def __init__(self, delay: float) -> None:
        self.containers = SlowContainers(delay)

    def close(self) -> None:
        pass


class Heartbeat:
    """Ticks on the event loop; ``longest_gap`` is how long the loop was kept from it."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            self.ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> "Heartbeat":
        self._task = asyncio.get_running_loop().create_task(self._beat())
        while not self.ticks:  # beating before the work under test starts
            await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.ticks.append(time.monotonic())  # a block at the very end counts too

    @property
    def longest_gap(self) -> float:
        return max(b - a for a, b in zip(self.ticks, self.ticks[1:], strict=False))


async def test_the_docker_runtime_keeps_the_event_loop_free_while_the_engine_is_slow(
    sessions: SessionFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.builder.backends import docker as docker_backend

    client = SlowClient(delay=0.6)
    monkeypatch.setattr(docker_backend, "docker_client", lambda: client)
    handle = "c0ffee"
    await add_deployment(sessions, DeploymentState.STOPPED, [handle])
    async with sessions() as session:
        record = (await session.exec(select(ReplicaRecord))).one()
    container = client.containers.known[handle] = SlowContainer(handle, delay=0.6)
    container.labels = {docker_backend.REPLICA_LABEL: str(record.id)}
    runtime = docker_backend.ContainerRuntime("test-owner", settings_for(tmp_path))
    supervisor = await make_supervisor(sessions, runtime, tmp_path)  # type: ignore[arg-type]
    async with Heartbeat() as heartbeat:
        await supervisor.start()  # lists the engine's containers, stops the unwanted one
        await supervisor.close()
    assert client.containers.known[handle].status == "exited"
    assert heartbeat.longest_gap < 0.4, f"the loop was blocked {heartbeat.longest_gap:.2f} s"
    assert await _no_replicas(sessions)


async def test_an_image_build_streams_its_lines_while_the_loop_stays_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.builder.backends import docker as docker_backend
    from services.builder.backends.sdk import Sdk

    seen_first = threading.Event()

    class Images:
        def get(self, name: str) -> Any:
            time.sleep(0.3)
            return type("Image", (), {"id": "sha256:feed", "tags": [name]})()

        def list(self, **_: Any) -> list[Any]:
            return []

    class Api:
        def build(self, **_: Any) -> Any:
            yield {"stream": "Step 1/2 : FROM python:3.11-slim\n"}
            # The next line comes only once the first reached the build log.
            assert seen_first.wait(5), "the first line was not logged while the build ran"
            time.sleep(0.5)
            yield {"stream": "Successfully built feed\n"}

    class Client:
        images = Images()
        api = Api()

        def close(self) -> None:
            pass

    monkeypatch.setattr(docker_backend, "docker_client", lambda: Client())
    builder = docker_backend.DockerBuilder(settings_for(tmp_path))

    async def no_sdk(log: LogLine) -> Sdk:
        return Sdk(digest="none")

    monkeypatch.setattr(builder, "_sdk_wheels", no_sdk)
    source = tmp_path / "code"
    source.mkdir()
    (source / "cloud_model.py").write_text("print('hi')\n")
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("Step 1/2"):
            seen_first.set()

    from modelcloud_proto.specs import BuildSpec

    job = BuildJob(
        build_id=uuid4(),
        version_id=uuid4(),
        spec=BuildSpec(),
        device=Device.CPU,
        source=source,
    )
    async with Heartbeat() as heartbeat:
        artifact = await builder.build(job, log)
    assert artifact.data["image_id"] == "sha256:feed"
    assert lines == ["Step 1/2 : FROM python:3.11-slim", "Successfully built feed"]
    assert heartbeat.longest_gap < 0.4, f"the loop was blocked {heartbeat.longest_gap:.2f} s"


@pytest.mark.parametrize("failure", ["the engine errs", "the SDK wheels fail"])
async def test_a_docker_build_that_fails_early_closes_its_engine_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    from modelcloud_proto.specs import BuildSpec
    from services.builder.backends import docker as docker_backend
    from services.builder.backends.sdk import Sdk

    class Images:
        def get(self, name: str) -> Any:
            if failure == "the engine errs":
                raise APIError("500 Server Error: the engine did not answer")
            return type("Image", (), {"id": "sha256:feed", "tags": [name]})()

    class Client:
        images = Images()
        closed = False

        def close(self) -> None:
            self.closed = True

    client = Client()
    monkeypatch.setattr(docker_backend, "docker_client", lambda: client)
    builder = docker_backend.DockerBuilder(settings_for(tmp_path))

    async def no_sdk(log: LogLine) -> Sdk:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(builder, "_sdk_wheels", no_sdk)
    source = tmp_path / "code"
    source.mkdir()
    (source / "cloud_model.py").write_text("print('hi')\n")
    job = BuildJob(
        build_id=uuid4(), version_id=uuid4(), spec=BuildSpec(), device=Device.CPU, source=source
    )
    with pytest.raises((APIError, OSError)):
        await builder.build(job, lambda line: None)
    assert client.closed, "the Docker client (its connection pool) was left open"
