"""The registry's subscriptions: the builder's outcomes move the version lifecycle on.

Each handler runs inside :func:`services.common.events.consumer.idempotent`, so its changes
and the "processed" marker commit together; events it emits go through the same outbox.
"""

from sqlmodel.ext.asyncio.session import AsyncSession

from modelcloud_proto.events import (
    CONSUMER_QUEUES,
    BuildFailed,
    BuildSucceeded,
    DeploymentFailed,
    DeploymentReady,
    Envelope,
    Event,
    ReplicaRestarted,
)
from services.registry.unit_of_work import UnitOfWork
from services.registry.versions import service

QUEUE = "registry"
PATTERNS = CONSUMER_QUEUES[QUEUE]  # declared by every bus at start, see modelcloud_proto.events


async def apply(session: AsyncSession, event: Event, envelope: Envelope) -> None:
    """Apply one builder event (the caller commits)."""
    uow = UnitOfWork(session=session, correlation_id=envelope.correlation_id)
    match event:
        case BuildSucceeded():
            await service.build_finished(uow=uow, version_id=event.version_id, ok=True, detail=None)
        case BuildFailed():
            step = f" at step {event.failed_step!r}" if event.failed_step else ""
            detail = f"build failed{step}: {event.reason}"
            await service.build_finished(
                uow=uow, version_id=event.version_id, ok=False, detail=detail
            )
        case DeploymentReady():
            await service.deployment_ready(
                uow=uow, version_id=event.version_id, replicas=event.replicas
            )
        case DeploymentFailed():
            await service.deployment_failed(
                uow=uow, version_id=event.version_id, reason=event.reason
            )
        case ReplicaRestarted():
            await service.replicas_changed(
                uow=uow,
                version_id=event.version_id,
                replica=event.replica,
                previous_address=event.previous_address,
            )
        case _:
            pass  # started/stopped: nothing to record in the lifecycle
