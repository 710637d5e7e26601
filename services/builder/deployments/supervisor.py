"""Keeping each deployment's replicas running: start them, wait for ``/healthz``, report
``builder.deployment.ready``; restart a replica that dies (with backoff) and report it;
stop them on offline. At start it reconciles what runs on the machine against what should
run, adopting replicas that outlived a builder restart and stopping every other one.

Replicas listen on ``BUILDER_REPLICA_HOST`` (127.0.0.1 unless the gateway runs on another
machine) and, with ``BUILDER_REPLICA_KEY`` set, answer only callers that send their version's
key (:mod:`modelcloud_proto.replica_keys`); their ``/healthz`` needs no key."""

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

log = logging.getLogger(__name__)
_LOG_TAIL = 20
_UNHEALTHY_CHECKS = 3  # failed /healthz checks in a row before a live replica is replaced


class ReplicaDidNotStart(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Reconcile, then watch every deployment that is wanted or being stopped."""
        if self.settings.replica_key is None:
            log.warning(
                "BUILDER_REPLICA_KEY is not set: replicas answer anyone who reaches their "
                "port, not only the gateway (set it, and GATEWAY_REPLICA_KEY, to one secret)"
            )
        running = self.runtime.running()
        async with self.sessions() as session:
            deployments = {d.version_id: d for d in (await session.exec(select(Deployment))).all()}
            records = list((await session.exec(select(ReplicaRecord))).all())
            known = {r.id for r in records}
            for handle, replica_id in running.items():
                if replica_id not in known:
                    log.warning("stopping replica %s: no deployment wants it", replica_id)
                    await self.runtime.stop(handle)
            for record in records:
                deployment = deployments.get(record.version_id)
                alive = record.handle in running
                if deployment is None or deployment.state not in WANTED:
                    if alive:
                        await self.runtime.stop(record.handle)
                    await session.delete(record)
                # A wanted replica that is gone (the machine restarted, or the builder
                # stopped its replicas on exit) stays recorded: the watch loop starts it
                # again on the same port, so its address does not change.
            await session.commit()
        for version_id, deployment in deployments.items():
            if deployment.state in WANTED or deployment.state is DeploymentState.STOPPING:
                self.wake(version_id)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.settings.stop_replicas_on_exit:
            async with self.sessions() as session:
                for record in (await session.exec(select(ReplicaRecord))).all():
                    await self.runtime.stop(record.handle)
        self.runtime.release()
        await self._http.aclose()

    def wake(self, version_id: UUID) -> None:
        """Look at this deployment again now (after a publish or offline request)."""
        self._wake.setdefault(version_id, asyncio.Event()).set()
        task = self._tasks.get(version_id)
        if task is None or task.done():
            self._tasks[version_id] = asyncio.create_task(
                self._watch(version_id), name=f"deployment-{version_id}"
            )

    # ------------------------------------------------------------------ one deployment

    async def _watch(self, version_id: UUID) -> None:
        wake = self._wake.setdefault(version_id, asyncio.Event())
        backoff = 1.0
        while True:
            wake.clear()
            deployment, records, artifact = await self._load(version_id)
            if deployment is None:
                return
            if deployment.state is DeploymentState.STOPPING:
                await self._stop_all(deployment, records)
                return
            if deployment.state not in WANTED:
                return
            try:
                if deployment.state is DeploymentState.STARTING:
                    await self._bring_up(deployment, records, artifact)
                else:
                    if await self._replace_dead(deployment, records, artifact):
                        backoff = 1.0
            except ReplicaDidNotStart as exc:
                if deployment.state is DeploymentState.STARTING:
                    await self._fail(deployment, exc.reason)
                    return
                log.warning("replica of %s did not come back: %s", version_id, exc.reason)
                await self._sleep(wake, backoff)
                backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
                continue
            await self._sleep(wake, self.settings.health_interval_s)

    async def _bring_up(
        self, deployment: Deployment, records: list[ReplicaRecord], artifact: Artifact
    ) -> None:
        started: list[ReplicaRecord] = []
        for record in records:  # left by a builder that stopped half-way through a start
            if self.runtime.alive(record.handle):
                started.append(record)
            else:
                await self._forget(record)
        try:
            for index in range(len(started), deployment.desired_replicas):
                port = deployment.port if index == 0 else 0
                started.append(await self._start_replica(deployment, artifact, port))
        except ReplicaDidNotStart:
            for record in started:
                await self.runtime.stop(record.handle)
            async with self.sessions() as session:
                for record in started:
                    found = await session.get(ReplicaRecord, record.id)
                    if found is not None:
                        await session.delete(found)
                await session.commit()
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
    ) -> bool:
        replaced = False
        for record in records:
            if not self.runtime.alive(record.handle):
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
                deployment, artifact, record.port, restarts=record.restarts + 1, replaces=record.id
            )
            async with self.sessions() as session:
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
            replaced = True
        return replaced

    async def _stop_all(self, deployment: Deployment, records: list[ReplicaRecord]) -> None:
        for record in records:
            await self.runtime.stop(record.handle)
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

    async def _fail(self, deployment: Deployment, reason: str) -> None:
        async with self.sessions() as session:
            current = await session.get(Deployment, deployment.version_id)
            if current is None:
                return
            current.state = DeploymentState.FAILED
            current.reason = reason
            current.updated_at = datetime.now(UTC)
            uow = self._uow(session)
            uow.emit(DeploymentFailed(version_id=deployment.version_id, reason=reason))
            await uow.commit()
        log.warning("deployment %s failed: %s", deployment.version_id, reason.splitlines()[0])

    # ------------------------------------------------------------------ one replica

    async def _start_replica(
        self,
        deployment: Deployment,
        artifact: Artifact,
        port: int,
        *,
        restarts: int = 0,
        replaces: UUID | None = None,
    ) -> ReplicaRecord:
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
        handle = await self.runtime.start(spec)
        record = ReplicaRecord(
            id=replica_id,
            version_id=deployment.version_id,
            handle=handle,
            host=host,
            port=spec.port,
            pool=Device.GPU if spec.gpu else Device.CPU,
            restarts=restarts,
            started_at=datetime.now(UTC),
        )
        async with self.sessions() as session:  # recorded first: a crash now leaves no orphan
            if replaces is not None:
                old = await session.get(ReplicaRecord, replaces)
                if old is not None:
                    await session.delete(old)
            session.add(record)
            await session.commit()
        await self._wait_healthy(record, spec.log_path)
        async with self.sessions() as session:
            found = await session.get(ReplicaRecord, record.id)
            if found is not None:
                found.ready_at = record.ready_at = datetime.now(UTC)
                await session.commit()
        return record

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
            if not self.runtime.alive(record.handle):
                output = self._output(record, log_path)
                await self.runtime.stop(record.handle)
                await self._forget(record)
                raise ReplicaDidNotStart(
                    "the replica exited during setup; its last lines:\n" + output
                )
            if await self._healthy(record):
                return
            await asyncio.sleep(0.25)
        output = self._output(record, log_path)
        await self.runtime.stop(record.handle)
        await self._forget(record)
        raise ReplicaDidNotStart(
            f"not healthy after {self.settings.health_timeout_s:.0f} s; its last lines:\n" + output
        )

    def _output(self, record: ReplicaRecord, log_path: Path) -> str:
        kept = self.runtime.output(record.handle, _LOG_TAIL)
        return kept.strip() or "(no output)" if kept is not None else _tail(log_path)

    async def _healthy(self, record: ReplicaRecord) -> bool:
        try:
            answer = await self._http.get(f"http://{record.host}:{record.port}/healthz")
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def _forget(self, record: ReplicaRecord) -> None:
        async with self.sessions() as session:
            found = await session.get(ReplicaRecord, record.id)
            if found is not None:
                await session.delete(found)
                await session.commit()

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
