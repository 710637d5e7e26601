"""``/v1/projects/{project}/builds``: build status and logs, live or kept."""

import re
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from services.builder.builds import service
from services.builder.builds.logs import BuildLogs
from services.builder.builds.models import BuildRead, BuildState
from services.builder.deps import Name, SessionDep, StateDep, access_to

router = APIRouter(prefix="/v1/projects/{project}/builds", tags=["builds"])
# Each of these ends a line, and so a field, in Server-Sent Events.
_SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@router.get("")
async def list_builds(
    project: Name,
    request: Request,
    session: SessionDep,
    service_name: Annotated[str | None, Query(alias="service", max_length=64)] = None,
    version: Annotated[str | None, Query(max_length=64)] = None,
) -> list[BuildRead]:
    """The project's builds, oldest first, optionally of one service and version."""
    await access_to(request, project, "read")
    return await service.list_builds(
        session=session, project=project, service=service_name, version=version
    )


@router.get("/{build_id}")
async def get_build(
    project: Name, build_id: UUID, request: Request, session: SessionDep
) -> BuildRead:
    await access_to(request, project, "read")
    return service.to_read(
        await service.get_build(session=session, project=project, build_id=build_id)
    )


@router.get(
    "/{build_id}/logs",
    response_class=StreamingResponse,
    response_model=None,
    responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}}},
)
async def build_logs(
    project: Name,
    build_id: UUID,
    request: Request,
    session: SessionDep,
    state: StateDep,
    follow: Annotated[bool, Query(description="stream lines live (Server-Sent Events)")] = False,
    offset: Annotated[int, Query(ge=0, description="the first byte to send")] = 0,
    limit: Annotated[int | None, Query(ge=1, description="the most bytes to send")] = None,
) -> StreamingResponse:
    """The build's output so far, streamed (``offset`` and ``limit`` pick a byte range of
    it; ``X-Log-Size`` says how long the whole log is now). With ``follow=true`` a
    Server-Sent Events stream instead: every line so far, then new ones as the build runs
    (from its first line, for a build still queued), then an ``end`` event with the
    build's state; a line holding a carriage return or line feed is sent as one ``data``
    field per piece, so its text never starts a field of its own."""
    await access_to(request, project, "read")
    build = await service.get_build(session=session, project=project, build_id=build_id)
    queued = build.state is BuildState.QUEUED
    # SQLite takes its write lock even to read: do not hold it while the stream runs.
    await session.close()
    logs: BuildLogs = state.build_logs
    if not follow:
        size = logs.size(build_id)
        start = min(offset, size)
        end = size if limit is None else min(size, start + limit)
        return StreamingResponse(
            logs.chunks(build_id, start, end),
            media_type="text/plain; charset=utf-8",
            headers={"Content-Length": str(end - start), "X-Log-Size": str(size)},
        )
    sessions = state.database.sessions

    async def events() -> AsyncIterator[str]:
        async for line in logs.follow(build_id, queued=queued):
            yield "".join(f"data: {piece}\n" for piece in _SSE_LINE_BREAK.split(line)) + "\n"
        async with sessions() as fresh:
            ended = await service.get_build(session=fresh, project=project, build_id=build_id)
        yield f"event: end\ndata: {ended.state}\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
