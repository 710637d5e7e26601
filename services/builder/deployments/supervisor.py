"""Keeping each deployment's replicas running: start them, wait for ``/healthz``, report
``builder.deployment.ready``; restart a replica that dies (with backoff) and report it;
stop them on offline. At start it reconciles what runs on the machine against what should
run, adopting replicas that outlived a builder restart and stopping every other one.

Replicas listen on ``BUILDER_REPLICA_HOST`` (127.0.0.1 unless the gateway runs on another
machine) and, with ``BUILDER_REPLICA_KEY`` set, answer only callers that send their version's
key (:mod:`modelcloud_proto.replica_keys`); their ``/healthz`` needs no key.

No database transaction is held while it waits on anything else: it reads what to do and
ends the transaction, acts (starts, stops, health checks: seconds each), then records the
result in a new short one. On SQLite every transaction takes the write lock at ``BEGIN``,
so one held across a replica's 10 s stop stalled every other writer ("database is
locked"). The runtime's query methods (``alive``, ``output``, ``running``) may block (the
Docker runtime asks the engine over its API): they run in a worker thread.

A deployment's watch never dies of an unexpected error (the runtime, the database): it is
logged with its traceback, reported by :meth:`Supervisor.problems` (``/readyz`` names the
supervisor while there are any: ``services/builder/main.py``) and retried with backoff; a
replica the runtime cannot start at all fails its deployment with the error's text.

A dead replica is replaced in two steps: the fresh one is recorded as soon as it runs (so a
crash leaves no replica nobody knows of), naming the record it ``replaces``; once it is
healthy, one transaction deletes the dead record, makes the fresh one ordinary and stages
``builder.replica.restarted``. A fresh record that still names a recorded replica is a swap
that an error or a crash interrupted: the next pass stops it and starts over, so a port
never ends up with two records."""

import asyncio
import contextlib
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import httpx
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import (
    DeploymentFailed,
    DeploymentReady,
    DeploymentStopped,
    ReplicaRestarted,
)
from modelcloud_proto.replica_keys import REPLICA_KEY_VARIABLE, version_key
from modelcloud_proto.specs import Device
from services.builder.backends.base import Artifact, ReplicaSpec, Runtime
from services.builder.builds.models import Build
from services.builder.deployments.models import (
    WANTED,
    Deployment,
    DeploymentState,
    ReplicaRecord,
)
from services.builder.settings import BuilderSettings
from services.builder.unit_of_work import UnitOfWork
from services.common.database import SessionFactory
from services.common.events.outbox import OutboxRelay
from services.common.runtime import PartDown

log = logging.getLogger(__name__)
_LOG_TAIL = 20
_UNHEALTHY_CHECKS = 3  # failed /healthz checks in a row before a live replica is replaced


class ReplicaDidNotStart(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplicasStillRunning(Exception):
    pass


class Supervisor:
    def __init__(
        self,
        *,
        sessions: SessionFactory,
        runtime: Runtime,
        settings: BuilderSettings,
        relay: OutboxRelay | None,
        logs: Path,
    ) -> None:
        self.sessions = sessions
        self.runtime = runtime
        self.settings = settings
        self.relay = relay
        self.logs = logs
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._wake: dict[UUID, asyncio.Event] = {}
        self._http = httpx.AsyncClient(timeout=5)
        self._failed_checks: dict[UUID, int] = {}
        self._problems: dict[UUID, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Reconcile, then watch every deployment that is wanted or being stopped."""
        if self.settings.replica_key is None:
            log.warning(
                "BUILDER_REPLICA_KEY is not set: replicas answer anyone who reaches their "
                "port, not only the gateway (set it, and GATEWAY_REPLICA_KEY, to one secret)"
            )
        running = await asyncio.to_thread(self.runtime.running)
        async with self.sessions() as session:
            deployments = {d.version_id: d for d in (await session.exec(select(Deployment))).all()}
            records = list((await session.exec(select(ReplicaRecord))).all())
        known = {r.id for r in records}
        orphans = [handle for handle, replica_id in running.items() if replica_id not in known]
        for handle in orphans:
            log.warning("stopping replica %s: no deployment wants it", running[handle])
        unwanted = [
            record
            for record in records
            if (deployment := deployments.get(record.version_id)) is None
            or deployment.state not in WANTED
        ]
        await self._stop_each([*orphans, *(r.handle for r in unwanted if r.handle in running)])
        await self._forget(*unwanted)
        # A wanted replica that is gone (the machine restarted, or the builder stopped its
        # replicas on exit) stays recorded: the watch loop starts it again on the same
        # port, so its address does not change.
        for version_id, deployment in deployments.items():
            if deployment.state in WANTED or deployment.state is DeploymentState.STOPPING:
                self.wake(version_id)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            if self.settings.stop_replicas_on_exit:
                async with self.sessions() as session:
                    handles = [r.handle for r in (await session.exec(select(ReplicaRecord))).all()]
                await self._stop_each(handles)
        finally:
            await asyncio.to_thread(self.runtime.release)
            await self._http.aclose()

    def problems(self) -> dict[str, str]:
        """What keeps a deployment's watch from doing its work now: the kind of the last
        unexpected error of each watch that is retrying, by task name (empty when all is
        well). A watch that gets through a pass again is taken off."""
        return {f"deployment-{version_id}": text for version_id, text in self._problems.items()}

    async def check(self) -> None:
        """The supervisor's readiness (its part's ``live`` check): down, naming each
        failing watch and its error, while any watch is retrying."""
        if problems := self.problems():
            failing = "; ".join(f"{task}: {text}" for task, text in sorted(problems.items()))
            raise PartDown(f"{len(problems)} deployment watch(es) failing: {failing}")

    def wake(self, version_id: UUID) -> None:
        """Look at this deployment again now (after a publish or offline request)."""
        self._wake.setdefault(version_id, asyncio.Event()).set()
        task = self._tasks.get(version_id)
        if task is None or task.done():
            task = asyncio.create_task(self._watch(version_id), name=f"deployment-{version_id}")
            task.add_done_callback(self._watch_ended)
            self._tasks[version_id] = task

    def _watch_ended(self, task: "asyncio.Task[None]") -> None:
        # _watch catches every Exception: this is for what slips past it, never silently.
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s ended by an error", task.get_name(), exc_info=error)

    # ------------------------------------------------------------------ one deployment

    async def _watch(self, version_id: UUID) -> None:
        wake = self._wake.setdefault(version_id, asyncio.Event())
        first_backoff = min(1.0, self.settings.restart_backoff_max_s)
        backoff = first_backoff
        while True:
            wake.clear()
            try:
                pause = await self._pass(version_id)
            except ReplicaDidNotStart as exc:  # a ready deployment's replica, not replaced yet
                log.warning("replica of %s did not come back: %s", version_id, exc.reason)
                pause = backoff
                backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
            except Exception as exc:  # the watch must outlive any one pass
                # Its kind only: /readyz answers anyone, the message (and traceback) is logged.
                self._problems[version_id] = type(exc).__name__
                log.exception(
                    "watching deployment %s failed; retrying in %.1f s", version_id, backoff
                )
                pause = backoff
                backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
            else:
                self._problems.pop(version_id, None)
                if pause is None:
                    return
                backoff = first_backoff
            await self._sleep(wake, pause)

    async def _pass(self, version_id: UUID) -> float | None:
        """Look at the deployment once and do what it needs; returns how long to wait
        before the next look, or ``None`` when there is nothing more to watch."""
        deployment, records, artifact = await self._load(version_id)
        if deployment is None:
            return None
        if deployment.state is DeploymentState.STOPPING:
            await self._stop_all(deployment, records)
            return None
        if deployment.state not in WANTED:
            return None
        records = await self._undo_unfinished_replacements(records)
        if deployment.state is DeploymentState.STARTING:
            try:
                await self._bring_up(deployment, records, artifact)
            except ReplicaDidNotStart as exc:
                if await self._fail(deployment, exc.reason):
                    return None
                return 0.0  # taken offline meanwhile: the next pass, now, stops it
        else:
            await self._replace_dead(deployment, records, artifact)
        return self.settings.health_interval_s

    async def _bring_up(
        self, deployment: Deployment, records: list[ReplicaRecord], artifact: Artifact
    ) -> None:
        started: list[ReplicaRecord] = []
        for record in records:  # left by a builder that stopped half-way through a start
            if await self._alive(record):
                started.append(record)
            else:
                await self._forget(record)
        try:
            for index in range(len(started), deployment.desired_replicas):
                port = deployment.port if index == 0 else 0
                record = await self._start_replica(deployment, artifact, port)
                started.append(record)
                await self._record_ready(record)
        except ReplicaDidNotStart:
            await self._stop_each([record.handle for record in started])
            await self._forget(*started)
            raise
        async with self.sessions() as session:
            current = await session.get(Deployment, deployment.version_id)
            if current is None or current.state is not DeploymentState.STARTING:
                return  # taken offline meanwhile: the next pass stops what was started
            current.state = DeploymentState.READY
            current.reason = None
            current.updated_at = datetime.now(UTC)
            uow = self._uow(session)
            uow.emit(
                DeploymentReady(
                    version_id=deployment.version_id, replicas=[r.as_event() for r in started]
                )
            )
            await uow.commit()
        log.info("deployment %s ready with %d replicas", deployment.version_id, len(started))

    async def _replace_dead(
        self, deployment: Deployment, records: list[ReplicaRecord], artifact: Artifact
    ) -> None:
        for record in records:
            if not await self._alive(record):
                reason = "its process exited"
            elif await self._healthy(record):
                self._failed_checks.pop(record.id, None)
                continue
            else:
                failed = self._failed_checks[record.id] = self._failed_checks.get(record.id, 0) + 1
                if failed < _UNHEALTHY_CHECKS:
                    continue
                reason = f"it failed {failed} health checks in a row"
            self._failed_checks.pop(record.id, None)
            log.warning(
                "replica %s:%s of %s: %s", record.host, record.port, record.version_id, reason
            )
            await self.runtime.stop(record.handle)
            fresh = await self._start_replica(
                deployment, artifact, record.port, restarts=record.restarts + 1, replaces=record
            )
            # The swap, all or nothing: were it not to commit, the fresh record still names
            # the dead one and the next pass undoes it (see the module's docstring).
            async with self.sessions() as session:
                found = await session.get(ReplicaRecord, fresh.id)
                if found is None:  # cannot happen: only this watch forgets this record
                    raise ReplicaDidNotStart(f"replacement {fresh.id} is no longer recorded")
                found.replaces = None
                found.ready_at = datetime.now(UTC)
                old = await session.get(ReplicaRecord, record.id)
                if old is not None:
                    await session.delete(old)
                uow = self._uow(session)
                uow.emit(
                    ReplicaRestarted(
                        version_id=deployment.version_id,
                        replica=fresh.as_event(),
                        restarts=fresh.restarts,
                        reason=reason,
                        previous_address=f"{record.host}:{record.port}",
                    )
                )
                await uow.commit()
            fresh.replaces, fresh.ready_at = found.replaces, found.ready_at

    async def _undo_unfinished_replacements(
        self, records: list[ReplicaRecord]
    ) -> list[ReplicaRecord]:
        """Stop and forget each replacement whose swap never committed (the replica it
        replaces is still recorded), so that one is replaced again on its own port; one whose
        replaced record is gone anyway is kept as an ordinary replica. Returns the records
        that remain."""
        recorded = {record.id for record in records}
        unfinished = [r for r in records if r.replaces is not None and r.replaces in recorded]
        orphaned = [r for r in records if r.replaces is not None and r.replaces not in recorded]
        if unfinished:
            log.warning(
                "undoing %d interrupted replica replacement(s) of %s",
                len(unfinished),
                unfinished[0].version_id,
            )
            if failed := await self._stop_each([record.handle for record in unfinished]):
                raise ReplicasStillRunning(f"could not stop replicas {', '.join(failed)}")
            await self._forget(*unfinished)
            for record in unfinished:
                self._failed_checks.pop(record.id, None)
        if orphaned:
            async with self.sessions() as session:
                for record in orphaned:
                    found = await session.get(ReplicaRecord, record.id)
                    if found is not None:
                        found.replaces = record.replaces = None
                await session.commit()
        undone = {record.id for record in unfinished}
        return [record for record in records if record.id not in undone]

    async def _stop_all(self, deployment: Deployment, records: list[ReplicaRecord]) -> None:
        if failed := await self._stop_each([record.handle for record in records]):
            # Still recorded and still STOPPING: the watch tries again after a backoff.
            raise ReplicasStillRunning(f"could not stop replicas {', '.join(failed)}")
        async with self.sessions() as session:
            for record in records:
                found = await session.get(ReplicaRecord, record.id)
                if found is not None:
                    await session.delete(found)
            current = await session.get(Deployment, deployment.version_id)
            if current is not None and current.state is DeploymentState.STOPPING:
                current.state = DeploymentState.STOPPED
                current.updated_at = datetime.now(UTC)
                uow = self._uow(session)
                uow.emit(DeploymentStopped(version_id=deployment.version_id))
                await uow.commit()
            else:
                await session.commit()
        log.info("deployment %s stopped", deployment.version_id)

    async def _fail(self, deployment: Deployment, reason: str) -> bool:
        """Fail the deployment if it is still starting; returns whether it did. One taken
        offline while it started is left STOPPING: the next pass stops it and reports
        ``builder.deployment.stopped``, which the registry waits for."""
        async with self.sessions() as session:
            current = await session.get(Deployment, deployment.version_id)
            if current is None or current.state is not DeploymentState.STARTING:
                return False
            current.state = DeploymentState.FAILED
            current.reason = reason
            current.updated_at = datetime.now(UTC)
            uow = self._uow(session)
            uow.emit(DeploymentFailed(version_id=deployment.version_id, reason=reason))
            await uow.commit()
        log.warning("deployment %s failed: %s", deployment.version_id, reason.splitlines()[0])
        return True

    # ------------------------------------------------------------------ one replica

    async def _start_replica(
        self,
        deployment: Deployment,
        artifact: Artifact,
        port: int,
        *,
        restarts: int = 0,
        replaces: ReplicaRecord | None = None,
    ) -> ReplicaRecord:
        """Start a replica and wait until it is healthy; it is recorded (not yet as ready)
        as soon as the runtime runs it."""
        host = self.settings.replica_host
        gpu = deployment.device is Device.GPU or (
            deployment.device is Device.ANY and self.settings.gpus > 0
        )
        replica_id = uuid4()
        spec = ReplicaSpec(
            replica_id=replica_id,
            version_id=deployment.version_id,
            artifact=artifact,
            host=host,
            port=_free_port(host, port),
            concurrency=deployment.concurrency,
            gpu=gpu and self.settings.gpus > 0,
            log_path=self.logs / f"{deployment.version_id}" / f"{replica_id}.log",
            environment=self._replica_environment(deployment.version_id),
            project=deployment.project,
        )
        try:
            handle = await self.runtime.start(spec)
        except Exception as exc:  # Popen's OSError, the engine's APIError...
            # Not one that a later try would fix by itself (a missing interpreter, an image
            # gone, a refused request): the deployment fails, saying why.
            log.exception("replica of %s could not be started", deployment.version_id)
            raise ReplicaDidNotStart(
                f"the replica could not be started: {type(exc).__name__}: {exc}"
            ) from exc
        record = ReplicaRecord(
            id=replica_id,
            version_id=deployment.version_id,
            handle=handle,
            host=host,
            port=spec.port,
            pool=Device.GPU if spec.gpu else Device.CPU,
            restarts=restarts,
            started_at=datetime.now(UTC),
            replaces=replaces.id if replaces is not None else None,
        )
        async with self.sessions() as session:  # recorded first: a crash now leaves no orphan
            session.add(record)
            await session.commit()
        await self._wait_healthy(record, spec.log_path)
        return record

    async def _record_ready(self, record: ReplicaRecord) -> None:
        async with self.sessions() as session:
            found = await session.get(ReplicaRecord, record.id)
            if found is not None:
                found.ready_at = record.ready_at = datetime.now(UTC)
                await session.commit()

    def _replica_environment(self, version_id: UUID) -> dict[str, str]:
        """The key its callers must send: derived for this version only, so a replica never
        holds the shared secret or a key that opens another version's replicas."""
        if self.settings.replica_key is None:
            return {}
        secret = self.settings.replica_key.get_secret_value()
        return {REPLICA_KEY_VARIABLE: version_key(secret, version_id)}

    async def _wait_healthy(self, record: ReplicaRecord, log_path: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.health_timeout_s
        while loop.time() < deadline:
            if not await self._alive(record):
                output = await self._output(record, log_path)
                await self.runtime.stop(record.handle)
                await self._forget(record)
                raise ReplicaDidNotStart(
                    "the replica exited during setup; its last lines:\n" + output
                )
            if await self._healthy(record):
                return
            await asyncio.sleep(0.25)
        output = await self._output(record, log_path)
        await self.runtime.stop(record.handle)
        await self._forget(record)
        raise ReplicaDidNotStart(
            f"not healthy after {self.settings.health_timeout_s:.0f} s; its last lines:\n" + output
        )

    async def _output(self, record: ReplicaRecord, log_path: Path) -> str:
        kept = await asyncio.to_thread(self.runtime.output, record.handle, _LOG_TAIL)
        if kept is not None:
            return kept.strip() or "(no output)"
        return await asyncio.to_thread(_tail, log_path)

    async def _alive(self, record: ReplicaRecord) -> bool:
        return await asyncio.to_thread(self.runtime.alive, record.handle)

    async def _healthy(self, record: ReplicaRecord) -> bool:
        try:
            answer = await self._http.get(f"http://{record.host}:{record.port}/healthz")
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def _forget(self, *records: ReplicaRecord) -> None:
        if not records:
            return
        async with self.sessions() as session:
            for record in records:
                found = await session.get(ReplicaRecord, record.id)
                if found is not None:
                    await session.delete(found)
            await session.commit()

    async def _stop_each(self, handles: list[str]) -> list[str]:
        """Stop these replicas side by side (each may take its whole grace period), outside
        any transaction; one that cannot be stopped is logged, the others still are.
        Returns the handles that could not be stopped."""
        results = await asyncio.gather(
            *(self.runtime.stop(handle) for handle in handles), return_exceptions=True
        )
        failed = []
        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, Exception):
                log.error("replica %s could not be stopped", handle, exc_info=result)
                failed.append(handle)
            elif isinstance(result, BaseException):
                raise result
        return failed

    # ------------------------------------------------------------------ helpers

    async def _load(
        self, version_id: UUID
    ) -> tuple[Deployment | None, list[ReplicaRecord], Artifact]:
        async with self.sessions() as session:
            deployment = await session.get(Deployment, version_id)
            records = (
                await session.exec(
                    select(ReplicaRecord)
                    .where(ReplicaRecord.version_id == version_id)
                    .order_by(col(ReplicaRecord.started_at))
                )
            ).all()
            build = await session.get(Build, deployment.build_id) if deployment else None
        artifact = Artifact(backend=self.runtime.name, data=(build.artifact or {}) if build else {})
        return deployment, list(records), artifact

    def _uow(self, session: AsyncSession) -> UnitOfWork:
        return UnitOfWork(session=session, relay=self.relay)

    @staticmethod
    async def _sleep(wake: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)


def _free_port(host: str, preferred: int) -> int:
    """``preferred`` when it can be bound now, else a free port the system picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            # As the replica's server binds: a port in TIME_WAIT after a restart is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ReplicaDidNotStart(f"no free port on {host}")


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(lines[-_LOG_TAIL:]) or "(no output)"
