"""What every service's FastAPI app has: problem+json errors, request and correlation ids
bound to the logs, request body limits (``services/common/body_limits.py``), Prometheus
metrics, ``/healthz`` and ``/readyz``."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.body_limits import BodyLimit, BodyLimits, Endpoint, TokenCheck
from services.common.docs import docs_router
from services.common.heap import settle_after_startup
from services.common.problems import install_problem_handlers, problem_responses

ReadinessCheck = Callable[[], Awaitable[None]]
# How long /readyz waits for one check (Kubernetes' probe gives up after 1 s by default, set
# it higher than this).
READINESS_TIMEOUT_S = 2.0
OPENAPI_URL = "/openapi.json"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", OPENAPI_URL, "/docs"})

# What any route may answer; a route adds its own (409, 503, ...) with problem_responses().
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = problem_responses(
    {
        400: "A body that cannot be read (not JSON, not a form, an unreadable upload)",
        401: "Missing or invalid token",
        403: "The token's role on the project does not allow this",
        404: "Not found (or not yours)",
        413: "A body over the route's limit",
        431: "Request headers over 16 KB",
        422: "Invalid input; `errors` names each field",
    }
)


def create_service_app(
    *,
    service: str,
    version: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    max_request_bytes: int,
    route_body_bytes: Mapping[Endpoint, int] | None = None,
    token_check: TokenCheck | None = None,
    serve_openapi: bool = True,
) -> FastAPI:
    """A request body may carry ``max_request_bytes``, or what ``route_body_bytes`` gives
    its route's endpoint (uploads); ``token_check`` accepts the caller before a body past
    ``max_request_bytes`` is read. ``serve_openapi=False``: the app serves a document of
    its own at ``/openapi.json`` (the gateway's is the whole platform's)."""

    @contextlib.asynccontextmanager
    async def started(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(app):
            settle_after_startup()
            yield

    app = FastAPI(
        title=f"ModelCloud {service}",
        version=version,
        description=description,
        lifespan=started,
        responses=PROBLEM_RESPONSES,
        openapi_url=OPENAPI_URL if serve_openapi else None,
        docs_url=None,  # ours, with Swagger UI served from here (services/common/docs.py)
        redoc_url=None,
    )
    app.state.readiness_checks = {}
    install_problem_handlers(app)
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.include_router(_observability_router(registry))
    app.include_router(docs_router(app, OPENAPI_URL))
    limits = BodyLimits(max_request_bytes, dict(route_body_bytes or {}), token_check)
    app.add_middleware(BodyLimit, limits=limits)
    # Added last, so outermost: its log line and metrics see the body limits' answers too.
    app.add_middleware(RequestContext, service=service, registry=registry)
    return app


class NotReady(Exception):
    """A readiness check's failure whose message is written for ``/readyz`` (it says
    nothing a stranger may not read)."""


def add_readiness_check(app: FastAPI, name: str, check: ReadinessCheck) -> None:
    """``/readyz`` answers 503 naming ``name`` while ``check`` raises (the service runtime
    adds one per part, ``services/common/runtime``)."""
    app.state.readiness_checks[name] = check


def _observability_router(registry: CollectorRegistry) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> Response:
        checks: dict[str, ReadinessCheck] = dict(request.app.state.readiness_checks)
        # All at once, each bounded: a broker that does not answer must not hold the probe
        # past its own timeout, nor hide what else is failing.
        results = await asyncio.gather(
            *(asyncio.wait_for(check(), READINESS_TIMEOUT_S) for check in checks.values()),
            return_exceptions=True,
        )
        failing = {
            name: _failure(result)
            for name, result in zip(checks, results, strict=True)
            if isinstance(result, Exception)
        }
        if failing:
            return JSONResponse({"status": "unready", "failing": failing}, status_code=503)
        return JSONResponse({"status": "ready"})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _failure(exc: Exception) -> str:
    """What ``/readyz`` (open to anyone) says of a failing check: the kind of error only,
    never its message (SQL, parameters, names); a :class:`NotReady` carries text written for
    it (``waiting for event-bus``)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {READINESS_TIMEOUT_S:g}s"
    if isinstance(exc, NotReady):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


class RequestContext:
    """Per request: ids bound to the logs and echoed back, metrics, one log line."""

    def __init__(self, app: ASGIApp, *, service: str, registry: CollectorRegistry) -> None:
        self.app = app
        self.log = structlog.get_logger("modelcloud.http")
        self.requests = Counter(
            "http_requests_total",
            "Requests handled",
            ["service", "method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Request latency",
            ["service", "method", "route"],
            registry=registry,
        )
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = _header(headers, b"x-request-id") or uuid.uuid4().hex
        correlation_id = _header(headers, b"x-correlation-id") or request_id
        structlog.contextvars.bind_contextvars(request_id=request_id, correlation_id=correlation_id)
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        started = time.perf_counter()
        status = 500

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode()),
                    (b"x-correlation-id", correlation_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.requests.labels(self.service, scope["method"], route, str(status)).inc()
            self.latency.labels(self.service, scope["method"], route).observe(elapsed)
            self.log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id", "correlation_id")


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    if not value:
        return None
    text = value.decode("latin-1")[:128]
    return text if text.isprintable() else None
