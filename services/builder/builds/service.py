"""Running builds, one at a time, in the order they were asked for.

A consumed ``registry.build.requested`` only records a queued build; the runner takes it
from there: ``builder.build.started``, the backend's steps with their output in the build
log, then ``builder.build.succeeded`` or ``builder.build.failed`` naming the step. A build
that was running when the builder stopped is run again when it starts.

No transaction is held while a build runs (minutes): the runner marks it running and
commits, builds, then records the outcome in a new transaction. An unexpected error of the
runner itself (the database gone, a full disk) ends :meth:`BuildRunner.run`: the service
runtime's worker (``services/common/runtime/workers.py``) logs it with its traceback, names
it in ``/readyz`` and runs it again with backoff, and a run starts by queueing again the
build that was running.
"""

import asyncio
import contextlib
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import BuildFailed, BuildRequested, BuildStarted, BuildSucceeded
from modelcloud_proto.specs import BuildSpec, Device
from services.builder.backends.base import BuildBackend, BuildJob, StepFailed
from services.builder.builds.logs import BuildLogs
from services.builder.builds.models import Build, BuildRead, BuildState
from services.builder.bundles import BundleSource
from services.builder.unit_of_work import UnitOfWork
from services.common.database import SessionFactory
from services.common.events.outbox import OutboxRelay
from services.common.problems import NotFound

log = logging.getLogger(__name__)


def queue_build(session: AsyncSession, event: BuildRequested, device: Device) -> Build:
    build = Build(
        version_id=event.version_id,
        project=event.project,
        service=event.service,
        version=event.version,
        bundle_sha256=event.bundle_sha256,
        device=device,
        build_spec=event.build_spec.model_dump(mode="json"),
        created_at=datetime.now(UTC),
    )
    session.add(build)
    return build


class BuildRunner:
    def __init__(
        self,
        *,
        sessions: SessionFactory,
        backend: BuildBackend,
        bundles: BundleSource,
        logs: BuildLogs,
        relay: OutboxRelay | None,
        scratch: Path,
    ) -> None:
        self.sessions = sessions
        self.backend = backend
        self.bundles = bundles
        self.logs = logs
        self.relay = relay
        self.scratch = scratch
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Run queued builds until cancelled; an unexpected error ends it (the runtime's
        worker restarts it, and the restart queues the interrupted build again)."""
        await self._requeue_interrupted()
        while True:
            build_id = await self._next()
            if build_id is not None:
                await self._run_one(build_id)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _requeue_interrupted(self) -> None:
        # Builds run one at a time, and none is running now: one marked running was cut
        # short (a builder stop, a crash of the runner) and is run again.
        async with self.sessions() as session:
            interrupted = select(Build).where(Build.state == BuildState.RUNNING)
            for build in (await session.exec(interrupted)).all():
                build.state = BuildState.QUEUED
            await session.commit()

    async def _next(self) -> UUID | None:
        async with self.sessions() as session:
            query = (
                select(Build.id)
                .where(Build.state == BuildState.QUEUED)
                .order_by(col(Build.created_at))
                .limit(1)
            )
            return (await session.exec(query)).first()

    async def _run_one(self, build_id: UUID) -> None:
        async with self.sessions() as session:
            build = await session.get(Build, build_id)
            if build is None:
                return
            build.state = BuildState.RUNNING
            build.started_at = datetime.now(UTC)
            uow = UnitOfWork(session=session, relay=self.relay)
            uow.emit(BuildStarted(version_id=build.version_id, build_id=build.id))
            await uow.commit()
        self.logs.begin(build_id)

        def write(line: str) -> None:
            self.logs.write(build_id, line)

        write(f"building {build.project}/{build.service} {build.version} with {self.backend.name}")
        self.scratch.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(dir=self.scratch) as folder:
                source = await self.bundles.fetch(
                    project=build.project,
                    service=build.service,
                    version=build.version,
                    sha256=build.bundle_sha256,
                    into=Path(folder),
                )
                job = BuildJob(
                    build_id=build.id,
                    version_id=build.version_id,
                    spec=BuildSpec.model_validate(build.build_spec),
                    device=build.device,
                    source=source,
                    project=build.project,
                )
                artifact = await self.backend.build(job, write)
        except StepFailed as failure:
            write(f"build failed at step {failure.step!r}: {failure.reason.splitlines()[0]}")
            await self._finish(build_id, failure=failure)
        except Exception as exc:  # a bug or the machine: still a clear failed state
            log.exception("build %s crashed", build_id)
            write(f"build failed: {type(exc).__name__}: {exc}")
            await self._finish(
                build_id, failure=StepFailed("build", f"{type(exc).__name__}: {exc}")
            )
        else:
            write("build succeeded")
            await self._finish(
                build_id,
                artifact=artifact.data,
                reused=artifact.reused_environment,
                described=artifact.describe(),
            )
        finally:
            self.logs.end(build_id)

    async def _finish(
        self,
        build_id: UUID,
        *,
        failure: StepFailed | None = None,
        artifact: dict[str, object] | None = None,
        reused: bool = False,
        described: str = "",
    ) -> None:
        async with self.sessions() as session:
            build = await session.get(Build, build_id)
            if build is None:
                return
            build.finished_at = datetime.now(UTC)
            uow = UnitOfWork(session=session, relay=self.relay)
            if failure is not None:
                build.state = BuildState.FAILED
                build.failed_step = failure.step[:2000]
                build.reason = failure.reason[-20_000:]
                uow.emit(
                    BuildFailed(
                        version_id=build.version_id,
                        build_id=build.id,
                        failed_step=failure.step,
                        reason=failure.reason[-4000:],
                    )
                )
            else:
                build.state = BuildState.SUCCEEDED
                build.artifact = artifact
                build.reused_environment = reused
                uow.emit(
                    BuildSucceeded(
                        version_id=build.version_id, build_id=build.id, artifact=described
                    )
                )
            await uow.commit()


def to_read(build: Build) -> BuildRead:
    duration = None
    if build.started_at and build.finished_at:
        duration = round((build.finished_at - build.started_at).total_seconds(), 3)
    return BuildRead(
        id=build.id,
        version_id=build.version_id,
        project=build.project,
        service=build.service,
        version=build.version,
        state=build.state,
        failed_step=build.failed_step,
        reason=build.reason,
        reused_environment=build.reused_environment,
        created_at=build.created_at,
        started_at=build.started_at,
        finished_at=build.finished_at,
        duration_s=duration,
    )


async def list_builds(
    *, session: AsyncSession, project: str, service: str | None, version: str | None
) -> list[BuildRead]:
    query = select(Build).where(Build.project == project)
    if service is not None:
        query = query.where(Build.service == service)
    if version is not None:
        query = query.where(Build.version == version)
    builds = (await session.exec(query.order_by(col(Build.created_at)))).all()
    return [to_read(b) for b in builds]


async def get_build(*, session: AsyncSession, project: str, build_id: UUID) -> Build:
    build = await session.get(Build, build_id)
    if build is None or build.project != project:
        raise NotFound(f"no build {build_id} in project {project!r}")
    return build


async def latest_success(session: AsyncSession, version_id: UUID) -> Build | None:
    query = (
        select(Build)
        .where(Build.version_id == version_id, Build.state == BuildState.SUCCEEDED)
        .order_by(col(Build.finished_at).desc())
        .limit(1)
    )
    return (await session.exec(query)).first()
