"""The platform's REST APIs under the gateway's one origin: ``/v1/...`` goes to the
service that owns it, streamed both ways (uploads, downloads and live logs pass through
without being held). Each service checks the token itself."""

from collections.abc import Mapping
from urllib.parse import unquote

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from services.common.problems import NotFound, ServiceUnavailable
from services.gateway.state import gateway_state

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
    upstreams: Mapping[str, httpx.AsyncClient] = gateway_state(request).upstreams
    sent = _sent_path(request)
    if _has_dot_segment(sent) or _has_dot_segment(path):
        # httpx resolves dot segments when it builds the URL: /v1/../metrics would reach the
        # service's /metrics, past the /v1/ prefix the owner was picked by.
        raise NotFound(f"no route {request.url.path!r}")
    name = owner(path)
    client = upstreams[name]
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    if "content-length" in request.headers:
        headers.append(("content-length", request.headers["content-length"]))
    # A request that came with no body goes on with none: a stream would be sent chunked,
    # and a service refuses a body with no token unread (services/common/body_limits.py).
    sent_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    try:
        outgoing = client.build_request(
            request.method,
            # The path as it was sent, still percent-encoded: decoded, a %23 would end the
            # path at a '#' and a %00 or other control character is no URL at all.
            sent or f"/v1/{path}",
            params=request.url.query,  # as sent: repeated keys (?run=a&run=b) kept
            headers=headers,
            content=request.stream() if sent_body else None,
        )
    except httpx.InvalidURL:
        raise NotFound(f"no route {request.url.path!r}") from None
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


def _has_dot_segment(path: str) -> bool:
    """Whether a segment of ``path`` is ``.`` or ``..``, as sent or percent-decoded."""
    return any(
        segment in (".", "..") for form in (path, unquote(path)) for segment in form.split("/")
    )


def _sent_path(request: Request) -> str:
    """The request's path as the client sent it (some servers keep the query on it)."""
    raw: bytes = request.scope.get("raw_path") or b""
    return raw.partition(b"?")[0].decode("latin-1")
