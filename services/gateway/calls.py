"""Model calls: ``/models/{project}/{service}/v{n}/{path}`` for a published API version and
``/models/{project}/{service}/{path}`` for the newest one online; ``path`` is a command,
``meta``, ``openapi.json`` or ``healthz`` of the model's own server.

Only those are forwarded: ``POST`` of a command the version declares (its interface, as the
registry read it) and ``GET`` of ``meta``, ``healthz`` and ``openapi.json``; anything else
is a 404 here and never reaches the replica. ``POST /setup`` is not forwarded at all, for
any caller: setup options belong to the deployment, not to whoever calls it (one caller's
options would answer every later caller's calls). A command the registry could not read
from ``cloud_model.py`` (an upload warning names it) is not callable through the gateway.
Every forwarded call and health probe carries the key the version's replicas ask of their
callers (:mod:`modelcloud_proto.replica_keys`), so nothing else on the host can call them.

A call needs a token with read access to the project (any valid token for a public
service); the token stays here: the replica gets the caller's name in ``X-ModelCloud-User``.
A call is retried on another replica only when the first refused the connection (it never
reached the model); when every replica is busy past its bound the answer is 503 with
``Retry-After`` instead of an unbounded queue.

A call the gateway gives up on (its timeout, a 504) or whose caller goes away closes its
connection to the replica at once, never returning it to the pool: the model server takes
the closed connection as its caller leaving, drops the input if it still waits for the
model and cancels an ``async def`` command (the SDK's :mod:`modelcloud._runtime`).
"""

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette import routing
from starlette.requests import Request
from starlette.responses import Response
from yarl import URL

from modelcloud_proto.replica_keys import REPLICA_KEY_HEADER
from services.common.access import RegistryAccess
from services.common.problems import (
    BadGateway,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceProblem,
    ServiceUnavailable,
    problem_response,
)
from services.gateway.routing import AllBusy, Route, RoutingTable
from services.gateway.settings import GatewaySettings
from services.gateway.state import gateway_state

METHODS = ["GET", "POST"]
_PASSED_ON = ("content-type", "accept", "x-request-id", "x-correlation-id")
_PASSED_BACK = ("content-type", "retry-after")
# What a call whose caller went away is counted as (nginx's "client closed request"): the
# caller got no answer at all, and a 502 or 504 would blame the model for it.
CALLER_LEFT = 499


class CallMetrics:
    """Labelled by version id, never by project or service name: ``/metrics`` answers
    anyone, and the names of private projects and services are theirs. The registry maps
    an id back to its name for whoever may read the project. The status label is the status
    the caller got (504 for a timeout), or 499 when the caller left before the answer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["version_id", "status"]
        self.calls = Counter("model_calls_total", "Model calls", labels, registry=registry)
        self.latency = Histogram(
            "model_call_duration_seconds",
            "Model call latency through the gateway",
            labels[:1],
            registry=registry,
        )


async def call_version(request: Request) -> Response:
    """Call a published API version of a model service."""
    params = request.path_params
    return await _call(
        request, params["project"], params["service"], params["api_version"], params["path"]
    )


async def call_latest(request: Request) -> Response:
    """Call the newest online API version of a model service."""
    params = request.path_params
    return await _call(request, params["project"], params["service"], None, params["path"])


# Plain Starlette routes: a model call is the gateway's hot path, and FastAPI's dependency
# and validation layers would cost more per call than the forwarding itself (no parameter
# needs them). The platform's document describes them by hand (services/gateway/openapi.py);
# each model's own document is at ``.../openapi.json``.
routes = [
    routing.Route(
        "/models/{project}/{service}/v{api_version:int}/{path:path}",
        call_version,
        methods=METHODS,
    ),
    routing.Route("/models/{project}/{service}/{path:path}", call_latest, methods=METHODS),
]


async def _call(
    request: Request, project: str, service: str, api_version: int | None, path: str
) -> Response:
    state = gateway_state(request)
    settings: GatewaySettings = state.settings
    table: RoutingTable = state.routes
    access: RegistryAccess = state.access
    authorization = request.headers.get("authorization")
    route = table.find(project, service, api_version)
    if route is not None and route.public:
        user = await access.identify(authorization)
    else:
        user = (await access.check(authorization, project)).user
    if route is None:
        raise NotFound(_not_online(table, project, service, api_version))
    if not route.allows(request.method, path):
        raise NotFound(_not_callable(route, request.method, path))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise PayloadTooLarge(f"a model call carries at most {settings.max_request_bytes} bytes")
    body = await _body_within(request, settings.max_request_bytes)
    headers = {k: v for k, v in request.headers.items() if k in _PASSED_ON}
    headers["x-modelcloud-user"] = user
    metrics: CallMetrics = state.call_metrics
    started = time.perf_counter()
    status = 500  # what the problem handler answers an exception that is not a problem
    try:
        answer = await _unless_caller_leaves(
            request, _forward(request, table, route, path, body, headers, settings)
        )
        status = CALLER_LEFT if answer is None else answer.status_code
        return Response(status_code=CALLER_LEFT) if answer is None else answer
    except ServiceProblem as problem:
        status = problem.status
        raise
    finally:
        version_id = str(route.version_id)
        metrics.calls.labels(version_id, str(status)).inc()
        metrics.latency.labels(version_id).observe(time.perf_counter() - started)


async def _unless_caller_leaves(
    request: Request, call: Coroutine[Any, Any, Response]
) -> Response | None:
    """``call``'s answer, or None when the caller disconnected first: then the call is
    cancelled, which closes its connection to the replica (aiohttp closes a connection whose
    answer was not read whole), and the replica drops the work it had not started. The
    body has been read by now, so the next message can only be the caller leaving."""
    answer: Response | None = None
    with anyio.CancelScope() as scope:
        # One watching task, not a task group: a group would wrap the call's problems (a
        # 504, a 502) in an exception group on their way to the problem handler.
        watcher = asyncio.create_task(_cancel_when_caller_leaves(request, scope))
        try:
            answer = await call
        finally:
            watcher.cancel()
    return answer


async def _cancel_when_caller_leaves(request: Request, scope: anyio.CancelScope) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _forward(
    request: Request,
    table: RoutingTable,
    route: Route,
    path: str,
    body: bytes,
    headers: dict[str, str],
    settings: GatewaySettings,
) -> Response:
    session: aiohttp.ClientSession = gateway_state(request).replicas
    timeout_s = route.timeout_s or settings.call_timeout_s
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    tried: set[str] = set()
    while True:
        try:
            backend = table.pick(route, exclude=tried)
        except AllBusy:
            if tried:  # every replica refused: none is reachable now
                raise BadGateway(
                    f"no replica of {route.service} v{route.api_version} accepts connections"
                ) from None
            busy = ServiceUnavailable(
                f"every replica of {route.service} v{route.api_version} is busy; try again"
            )
            return problem_response(busy, request.url.path, retry_after_s=1)
        host, port = backend.address.rsplit(":", 1)
        url = URL.build(
            scheme="http",
            host=host,
            port=int(port),
            path=f"/{path}",
            query_string=request.url.query,
        )
        sent = headers if backend.key is None else {**headers, REPLICA_KEY_HEADER: backend.key}
        backend.outstanding += 1
        try:
            async with session.request(
                request.method, url, data=body, headers=sent, timeout=timeout
            ) as answer:
                try:
                    content = await answer.read()
                except BaseException:
                    # Timed out or cancelled half way through the answer: close the
                    # connection, so the replica sees its caller gone (never pooled).
                    answer.close()
                    raise
        except aiohttp.ClientConnectorError:
            # Never reached the model: safe to try another replica.
            table.eject(backend)
            tried.add(backend.address)
            continue
        except TimeoutError:
            raise GatewayTimeout(
                f"{route.service} v{route.api_version} did not answer within {timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise BadGateway(f"the replica failed mid-call: {type(exc).__name__}") from None
        finally:
            backend.outstanding -= 1
        if answer.status == 401:
            # A model server answers 401 only when it refused the replica key: the gateway's
            # and the builder's secrets differ, which is no fault of the caller's token.
            raise BadGateway(
                f"{route.service} v{route.api_version} refused the gateway's replica key "
                "(GATEWAY_REPLICA_KEY must equal BUILDER_REPLICA_KEY)"
            )
        passed = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED_BACK}
        passed["x-modelcloud-api-version"] = str(route.api_version)
        if path == "openapi.json" and answer.status == 200:
            content = _callable_only(content, route)
        return Response(content, status_code=answer.status, headers=passed)


def _callable_only(document: bytes, route: Route) -> bytes:
    """The model's own OpenAPI document less the operations the gateway does not forward
    (``/setup``): a client generated from it calls only what answers. A document that is
    not the JSON object expected passes as it came."""
    try:
        parsed = json.loads(document)
        paths = parsed["paths"]
        kept = {
            name: {
                method: operation
                for method, operation in operations.items()
                if route.allows(method.upper(), name.lstrip("/"))
            }
            for name, operations in paths.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return document
    parsed["paths"] = {name: operations for name, operations in kept.items() if operations}
    return json.dumps(parsed).encode()


def _not_callable(route: Route, method: str, path: str) -> str:
    name = f"{route.project}/{route.service} v{route.api_version}"
    path = path if len(path) <= 100 else path[:100] + "..."
    if path == "setup":
        return f"{name}: setup options belong to the deployment; /setup is not callable here"
    if method == "POST" and route.commands is not None:
        listed = ", ".join(sorted(route.commands)) or "none"
        return f"{path!r} is not a command of {name} (commands: {listed})"
    return f"{method} {path!r} is not callable on {name}"


async def _body_within(request: Request, limit: int) -> bytes:
    """The call's body, refused the moment it passes ``limit``: a chunked body declares no
    length, and reading it whole first held 584 MiB for a 400 MiB body before its 413."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"a model call carries at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _not_online(table: RoutingTable, project: str, service: str, api_version: int | None) -> str:
    online = table.api_versions(project, service)
    if not online:
        return f"no version of {project}/{service} is online"
    listed = ", ".join(f"v{v}" for v in online)
    return f"API version v{api_version} of {project}/{service} is not online (online: {listed})"
