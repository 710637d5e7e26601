"""``/v1/projects/{project}/runs``: training runs, their parameters and metric series."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import StreamingResponse

from services.common.access import access_to
from services.common.problems import InvalidInput, conflict
from services.metrics.deps import Name, SessionDep, StateDep
from services.metrics.runs import service
from services.metrics.runs.live import LiveHub
from services.metrics.runs.models import (
    Comparison,
    IngestResult,
    ParamValue,
    PointBatch,
    RunCreate,
    RunRead,
    RunStatus,
    RunUpdate,
    Series,
)

router = APIRouter(prefix="/v1/projects/{project}/runs", tags=["runs"])
KEEP_ALIVE_S = 15.0


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=conflict("a run with that id exists, with other contents"),
)
async def create_run(
    project: Name, data: RunCreate, request: Request, state: StateDep, session: SessionDep
) -> RunRead:
    access = await access_to(request, project, "write")
    return await service.create_run(session, project, access.user, data, state.live)


@router.get("")
async def list_runs(
    project: Name,
    request: Request,
    session: SessionDep,
    experiment: str | None = None,
    run_status: Annotated[RunStatus | None, Query(alias="status")] = None,
    param: Annotated[
        list[str], Query(description="key:value, repeatable: runs with these parameters")
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    metric: Annotated[
        list[str],
        Query(description="key>value (or >=, <, <=), repeatable: on each metric's last value"),
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RunRead]:
    access = await access_to(request, project, "read")
    bounds = []
    for index, item in enumerate(metric):
        found = service.METRIC_FILTER.match(item)
        if found is None:
            raise InvalidInput(f"metric[{index}]", f"{item!r} is not key>value (>=, <, <=)")
        try:
            bound = float(found["bound"])
        except ValueError:
            raise InvalidInput(f"metric[{index}]", f"{found['bound']!r} is not a number") from None
        bounds.append((found["key"], found["op"], bound))
    wanted = {}
    for index, item in enumerate(param):
        key, colon, value = item.partition(":")
        if not colon or not key:
            raise InvalidInput(f"param[{index}]", f"{item!r} is not key:value")
        wanted[key] = value
    return await service.list_runs(
        session,
        project,
        access.user,
        experiment=experiment,
        status=run_status,
        params=wanted,
        metrics=bounds,
        limit=limit,
    )


@router.get("/compare")
async def compare_runs(
    project: Name,
    request: Request,
    session: SessionDep,
    run: Annotated[list[UUID], Query(min_length=1, max_length=50)],
) -> Comparison:
    access = await access_to(request, project, "read")
    return await service.compare(session, project, access.user, run)


@router.get(
    "/live",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def live_updates(project: Name, request: Request, state: StateDep) -> StreamingResponse:
    """Server-Sent Events as runs change: ``points`` (``{run, points: [[key, step, value]]}``),
    ``run`` (a run created or changed), ``reload`` (a run's series grew by a big batch) and
    ``resync`` (this reader fell behind: reload everything)."""
    access = await access_to(request, project, "read")
    hub: LiveHub = state.live
    reader = hub.join(project, access.user)

    async def events() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            while True:
                if reader.behind:
                    while not reader.queue.empty():
                        reader.queue.get_nowait()
                    reader.behind = False
                    yield "event: resync\ndata: {}\n\n"
                try:
                    update = await asyncio.wait_for(reader.queue.get(), timeout=KEEP_ALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                body = json.dumps({"run": str(update.run_id), **update.data})
                yield f"event: {update.kind}\ndata: {body}\n\n"
        finally:
            hub.leave(project, reader)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{run_id}")
async def get_run(project: Name, run_id: UUID, request: Request, session: SessionDep) -> RunRead:
    access = await access_to(request, project, "read")
    run = await service.visible_run(session, project, access.user, run_id)
    return await service.read_run(session, run)


@router.patch("/{run_id}")
async def update_run(
    project: Name,
    run_id: UUID,
    data: RunUpdate,
    request: Request,
    state: StateDep,
    session: SessionDep,
) -> RunRead:
    access = await access_to(request, project, "write")
    run = await service.own_run(session, project, access.user, run_id)
    return await service.update_run(session, run, data, state.live)


@router.post("/{run_id}/params")
async def log_params(
    project: Name,
    run_id: UUID,
    params: dict[str, ParamValue],
    request: Request,
    session: SessionDep,
) -> RunRead:
    access = await access_to(request, project, "write")
    checked = RunCreate(name="-", params=params).params  # the same rules as at creation
    run = await service.own_run(session, project, access.user, run_id)
    return await service.log_params(session, run, checked)


@router.post("/{run_id}/metrics")
async def log_metrics(
    project: Name,
    run_id: UUID,
    batch: PointBatch,
    request: Request,
    state: StateDep,
    session: SessionDep,
) -> IngestResult:
    access = await access_to(request, project, "write")
    run = await service.own_run(session, project, access.user, run_id)
    limit = state.settings.max_points_per_call
    return await service.ingest(session, run, batch, limit, state.live)


@router.get("/{run_id}/metrics/{key:path}")
async def get_series(
    project: Name,
    run_id: UUID,
    key: str,
    request: Request,
    session: SessionDep,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000,
) -> Series:
    access = await access_to(request, project, "read")
    run = await service.visible_run(session, project, access.user, run_id)
    return await service.series(session, run, key, max_points)
