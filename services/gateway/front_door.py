"""The platform's REST APIs under the gateway's one origin: ``/v1/...`` goes to the
service that owns it, streamed both ways (uploads, downloads and live logs pass through
without being held). Each service checks the token itself."""

from collections.abc import Mapping

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from services.common.problems import ServiceUnavailable

router = APIRouter(include_in_schema=False)
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "proxy-authorization",
        "proxy-authenticate",
        "content-length",
    }
)
_BUILDER = ("builds", "deployments")
_FILESTORE = ("models",)
_METRICS = ("runs",)


def owner(path: str) -> str:
    """Which service answers ``/v1/<path>``."""
    parts = path.split("/")
    if parts[0] == "transfers":
        return "filestore"
    if parts[0] == "projects" and len(parts) > 2:
        if parts[2] in _BUILDER:
            return "builder"
        if parts[2] in _FILESTORE:
            return "filestore"
        if parts[2] in _METRICS:
            return "metrics"
    return "registry"


@router.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def front_door(path: str, request: Request) -> StreamingResponse:
    upstreams: Mapping[str, httpx.AsyncClient] = request.app.state.upstreams
    name = owner(path)
    client = upstreams[name]
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    if "content-length" in request.headers:
        headers.append(("content-length", request.headers["content-length"]))
    # A request that came with no body goes on with none: a stream would be sent chunked,
    # and a service refuses a body with no token unread (services/common/body_limits.py).
    sent_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    outgoing = client.build_request(
        request.method,
        f"/v1/{path}",
        params=request.url.query,  # as sent: repeated keys (?run=a&run=b) kept
        headers=headers,
        content=request.stream() if sent_body else None,
    )
    try:
        answer = await client.send(outgoing, stream=True)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the {name} cannot be reached: {type(exc).__name__}") from None
    # The body passes through as it came (aiter_raw), so its length and encoding stand.
    passed = {
        k: v
        for k, v in answer.headers.items()
        if k.lower() not in _HOP_BY_HOP or k.lower() == "content-length"
    }
    return StreamingResponse(
        answer.aiter_raw(),
        status_code=answer.status_code,
        headers=passed,
        background=BackgroundTask(answer.aclose),
    )
