"""``/v1/projects/{project}/deployments``: what runs for each published version."""

from fastapi import APIRouter, Request
from sqlmodel import col, select

from services.builder.deployments.models import (
    Deployment,
    DeploymentRead,
    ReplicaRead,
    ReplicaRecord,
)
from services.builder.deps import Name, SessionDep, access_to

router = APIRouter(prefix="/v1/projects/{project}/deployments", tags=["deployments"])


@router.get("")
async def list_deployments(
    project: Name, request: Request, session: SessionDep
) -> list[DeploymentRead]:
    await access_to(request, project, "read")
    deployments = (
        await session.exec(
            select(Deployment)
            .where(Deployment.project == project)
            .order_by(col(Deployment.updated_at))
        )
    ).all()
    out = []
    for deployment in deployments:
        records = (
            await session.exec(
                select(ReplicaRecord)
                .where(ReplicaRecord.version_id == deployment.version_id)
                # A replacement still starting serves nothing yet: the replica it replaces
                # is listed (at the same address) until the swap.
                .where(col(ReplicaRecord.replaces).is_(None))
            )
        ).all()
        out.append(
            DeploymentRead(
                project=deployment.project,
                service=deployment.service,
                version=deployment.version,
                version_id=deployment.version_id,
                state=deployment.state,
                reason=deployment.reason,
                desired_replicas=deployment.desired_replicas,
                replicas=[
                    ReplicaRead(
                        address=f"{r.host}:{r.port}",
                        pool=r.pool,
                        restarts=r.restarts,
                        started_at=r.started_at,
                        ready=r.ready_at is not None,
                    )
                    for r in records
                ],
            )
        )
    return out
