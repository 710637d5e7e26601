"""The builder's subscriptions: the registry's build, publish and offline requests.

Each handler runs inside :func:`services.common.events.consumer.idempotent`, so what it
records and the "processed" marker commit together; the long work (building, starting
replicas) happens after, in the build runner and the supervisor, which it wakes.
"""

from datetime import UTC, datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import (
    CONSUMER_QUEUES,
    BuildRequested,
    DeploymentFailed,
    Envelope,
    Event,
    OfflineRequested,
    PublishRequested,
)
from modelcloud_proto.specs import BuildSpec, Device
from services.builder.builds.service import BuildRunner, latest_success, queue_build
from services.builder.deployments.models import Deployment, DeploymentState
from services.builder.deployments.supervisor import Supervisor
from services.builder.unit_of_work import UnitOfWork
from services.common.database import after_commit

QUEUE = "builder"
PATTERNS = CONSUMER_QUEUES[QUEUE]  # declared by every bus at start, see modelcloud_proto.events


class BuilderConsumer:
    def __init__(self, runner: BuildRunner, supervisor: Supervisor) -> None:
        self.runner = runner
        self.supervisor = supervisor

    async def apply(self, session: AsyncSession, event: Event, envelope: Envelope) -> None:
        uow = UnitOfWork(session=session, correlation_id=envelope.correlation_id)
        match event:
            case BuildRequested():
                device = Device.GPU if event.build_spec.cuda else Device.CPU
                queue_build(session, event, device)
                after_commit(session, self.runner.wake)
            case PublishRequested():
                await self._publish(uow, event)
            case OfflineRequested():
                deployment = await session.get(Deployment, event.version_id)
                if deployment is not None and deployment.state is not DeploymentState.STOPPED:
                    deployment.state = DeploymentState.STOPPING
                    deployment.updated_at = datetime.now(UTC)
                    version_id = event.version_id
                    after_commit(session, lambda: self.supervisor.wake(version_id))
            case _:
                pass

    async def _publish(self, uow: UnitOfWork, event: PublishRequested) -> None:
        session = uow.session
        build = await latest_success(session, event.version_id)
        if build is None:
            uow.emit(
                DeploymentFailed(
                    version_id=event.version_id,
                    reason=f"version {event.version!r} has no successful build on this builder",
                )
            )
            return
        deployment = await session.get(Deployment, event.version_id)
        if deployment is None:
            deployment = Deployment(
                version_id=event.version_id,
                project=event.project,
                service=event.service,
                version=event.version,
                build_id=build.id,
                desired_replicas=event.replicas,
                port=event.port,
                device=event.device,
                updated_at=datetime.now(UTC),
            )
            session.add(deployment)
        deployment.build_id = build.id
        deployment.desired_replicas = event.replicas
        deployment.port = event.port
        deployment.device = event.device
        deployment.concurrency = BuildSpec.model_validate(build.build_spec).concurrency
        deployment.state = DeploymentState.STARTING
        deployment.reason = None
        deployment.updated_at = datetime.now(UTC)
        version_id = event.version_id
        after_commit(session, lambda: self.supervisor.wake(version_id))
