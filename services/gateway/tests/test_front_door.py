"""The front door passes ``/v1/...`` on as it came: a request with no body goes on with none,
so a service's rule "a body needs a token" (services/common/body_limits.py) never turns a
public page's plain GET into a 401; a body still goes on, and still needs its token."""

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from services.common.web import create_service_app
from services.gateway.front_door import router


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
    gateway.include_router(router)
    upstream = httpx.AsyncClient(transport=httpx.ASGITransport(service), base_url="http://m")
    gateway.state.upstreams = {"metrics": upstream}
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
