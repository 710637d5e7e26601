"""The front door passes ``/v1/...`` on as it came: a request with no body goes on with none,
so a service's rule "a body needs a token" (services/common/body_limits.py) never turns a
public page's plain GET into a 401; a body still goes on, and still needs its token."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry
from starlette.types import Message

from services.common.access import RegistryAccess
from services.common.problems import install_problem_handlers
from services.common.runtime import set_service_state
from services.common.web import create_service_app
from services.gateway.calls import CallMetrics
from services.gateway.front_door import router
from services.gateway.openapi import PlatformDocument
from services.gateway.routing import RoutingTable
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState


def _service() -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = create_service_app(
        service="metrics", version="0", description="", lifespan=lifespan, max_request_bytes=1024
    )

    @app.get("/v1/projects/{project}/runs/dashboard")
    async def dashboard(project: str) -> HTMLResponse:  # public: the token is in its fragment
        return HTMLResponse(f"<h1>{project}</h1>")

    @app.post("/v1/projects/{project}/runs")
    async def create(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return app


def _gateway(service: FastAPI) -> FastAPI:
    gateway = FastAPI()
    install_problem_handlers(gateway)
    gateway.include_router(router)
    upstream = httpx.AsyncClient(transport=httpx.ASGITransport(service), base_url="http://m")
    upstreams = {"metrics": upstream}
    state = GatewayState(
        settings=GatewaySettings(),
        routes=RoutingTable(max_outstanding=1, eject_s=1),
        access=RegistryAccess("http://registry", cache_s=0),
        upstreams=upstreams,
        platform_document=PlatformDocument(upstreams),
        replicas=cast(aiohttp.ClientSession, None),  # no model calls here
        call_metrics=CallMetrics(CollectorRegistry()),
    )
    set_service_state(gateway, state)
    return gateway


async def test_a_page_s_plain_get_reaches_the_service_without_a_token() -> None:
    gateway = _gateway(_service())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(gateway), base_url="http://gateway"
    ) as client:
        page = await client.get("/v1/projects/digits/runs/dashboard")
        assert page.status_code == 200, page.text
        assert page.text == "<h1>digits</h1>"

        anonymous = await client.post("/v1/projects/digits/runs", content=b"{}")
        assert anonymous.status_code == 401  # a body without a token, refused by the service

        sent = await client.post(
            "/v1/projects/digits/runs", content=b"{}", headers={"Authorization": "Bearer t"}
        )
        assert sent.json() == {"size": 2}


async def _raw_get(app: FastAPI, raw_path: bytes) -> tuple[int, bytes]:
    """A GET whose path goes in exactly as written (httpx would resolve its dot segments
    before sending, as a hand-written request does not)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway"), (b"authorization", b"Bearer any")],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
    }
    answer: dict[str, object] = {"body": b""}
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if requested:  # no disconnect while the answer streams
            await asyncio.Event().wait()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] = cast(bytes, answer["body"]) + cast(bytes, message.get("body", b""))

    await app(scope, receive, send)
    return cast(int, answer["status"]), cast(bytes, answer["body"])


async def test_dot_segments_never_reach_a_service_s_routes_outside_v1() -> None:
    gateway = _gateway(_service())
    for raw in (
        b"/v1/projects/digits/runs/../../../../metrics",
        b"/v1/projects/digits/runs/%2e%2e/%2e%2e/%2e%2e/%2e%2e/metrics",
        b"/v1/projects/digits/runs/./dashboard",
    ):
        status, body = await _raw_get(gateway, raw)
        assert status == 404, (raw, body)
        assert b"http_requests_total" not in body  # the service's /metrics
