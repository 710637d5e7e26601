"""Request body limits in process: an anonymous body is refused unread, a route's limit is
enforced on declared and chunked bodies alike, and a body past the default is read only
for a token the service accepts. Peak memory against real servers:
``tests/e2e/test_security_bodies.py``."""

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from services.common.problems import Unauthorized
from services.common.web import create_service_app

LIMIT = 64 << 10
UPLOAD_LIMIT = 1 << 20
GOOD = {"Authorization": "Bearer good"}
CHUNK = b"x" * (16 << 10)


class Item(BaseModel):
    name: str


class Pulled:
    """A request body that counts the chunks the server has asked for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.size:
            chunk = CHUNK[: self.size - self.sent]
            self.sent += len(chunk)
            yield chunk


@pytest.fixture
def app() -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    async def token_check(connection: HTTPConnection) -> None:
        connection.app.state.token_checks += 1
        if connection.headers.get("authorization") != GOOD["Authorization"]:
            raise Unauthorized("the token is not valid")

    async def items(item: Item) -> dict[str, str]:
        return {"name": item.name}

    async def upload(request: Request) -> dict[str, int]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}

    app = create_service_app(
        service="test",
        version="0",
        description="",
        lifespan=lifespan,
        max_request_bytes=LIMIT,
        route_body_bytes={upload: UPLOAD_LIMIT},
        token_check=token_check,
    )
    app.state.token_checks = 0
    app.post("/items")(items)
    app.put("/uploads")(upload)
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://test"
    ) as client:
        yield client


def declared(size: int, **headers: str) -> dict[str, str]:
    return {"Content-Length": str(size), **headers}


@pytest.mark.parametrize("length", ["declared", "chunked"])
async def test_an_anonymous_body_is_refused_unread(client: httpx.AsyncClient, length: str) -> None:
    body = Pulled(200 << 20)
    headers = declared(body.size) if length == "declared" else {}
    answer = await client.put("/uploads", content=body, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"] == "Bearer"
    assert body.sent == 0


async def test_a_declared_body_over_the_route_limit_is_refused_unread(
    client: httpx.AsyncClient,
) -> None:
    body = Pulled(200 << 20)
    answer = await client.post("/items", content=body, headers=declared(body.size, **GOOD))
    assert answer.status_code == 413
    assert answer.json()["detail"] == f"the body is over the limit of {LIMIT} bytes"
    assert body.sent == 0


@pytest.mark.parametrize(("path", "limit"), [("/items", LIMIT), ("/uploads", UPLOAD_LIMIT)])
async def test_a_chunked_body_is_refused_once_it_passes_the_limit(
    client: httpx.AsyncClient, path: str, limit: int
) -> None:
    body = Pulled(200 << 20)
    answer = await client.request(
        "POST" if path == "/items" else "PUT", path, content=body, headers=GOOD
    )
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert limit < body.sent <= limit + len(CHUNK)


async def test_an_upload_route_takes_more_than_the_default(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    body = Pulled(UPLOAD_LIMIT)
    answer = await client.put("/uploads", content=body, headers=GOOD)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"size": UPLOAD_LIMIT}
    assert app.state.token_checks == 1


@pytest.mark.parametrize("length", ["declared", "chunked"])
async def test_a_bad_token_sends_no_more_than_the_default(
    client: httpx.AsyncClient, length: str
) -> None:
    body = Pulled(UPLOAD_LIMIT)
    bad = {"Authorization": "Bearer bad"}
    headers = declared(body.size, **bad) if length == "declared" else bad
    answer = await client.put("/uploads", content=body, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["detail"] == "the token is not valid"
    assert body.sent <= (0 if length == "declared" else LIMIT + len(CHUNK))


async def test_bodies_within_the_limit_are_read_as_before(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    answer = await client.post("/items", json={"name": "a" * (LIMIT - 100)}, headers=GOOD)
    assert answer.status_code == 200
    invalid = await client.post("/items", json={"title": "a"}, headers=GOOD)
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["field"] == "name"
    assert app.state.token_checks == 0  # small bodies need no check of their own


async def test_a_request_without_a_body_needs_no_token_here(client: httpx.AsyncClient) -> None:
    answer = await client.get("/healthz")
    assert answer.status_code == 200
