"""The model server: a Starlette app exposing a :class:`ModelRuntime` over HTTP.

Routes: ``POST /<command>`` (JSON, or multipart form data for uploads), ``GET /meta``,
``GET /healthz``, ``POST /setup``, ``GET /openapi.json``. Every error is an RFC 9457
``application/problem+json`` document; no traceback ever reaches the caller.

Started by the platform, the server is given a replica key (``MODELCLOUD_REPLICA_KEY``) and
answers only requests that carry it in ``X-ModelCloud-Replica-Key``: the gateway, which
checks the caller's token, is then the only way in, whoever else can reach the port.
``/healthz`` stays open to the platform's health checks. Run by hand, there is no key.

A caller that disconnects before its answer (the gateway closes its connection when the
call times out or its own caller goes away) gets its call cancelled: an input still waiting
for the model is dropped unrun, an ``async def`` command is cancelled where it awaits, and a
synchronous command already running finishes in its thread (Python cannot stop a thread)
with its result discarded (see :mod:`modelcloud._runtime`).
"""

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelcloud._openapi import openapi_document
from modelcloud._runtime import ModelRuntime, ModelStatus
from modelcloud.data_types import Upload
from modelcloud.exceptions import (
    MalformedRequest,
    MethodNotAllowed,
    ModelCloudError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from modelcloud_proto.problem import PROBLEM_MEDIA_TYPE
from modelcloud_proto.replica_keys import REPLICA_KEY_HEADER

log = logging.getLogger("modelcloud.server")
_MAX_FORM_FILES = 64
_MAX_FORM_FIELDS = 256
# The status logged for a call whose caller left before its answer (nginx's "client closed
# request"); nobody receives it.
CALLER_LEFT = 499
_T = TypeVar("_T")


class ReplicaKeyRefused(ModelCloudError):
    """The request lacks the replica key the platform gave this server (its only 401)."""

    status = 401
    slug = "replica-key-refused"
    title = "Replica key missing or wrong"


def create_app(
    runtime: ModelRuntime, *, max_body_bytes: int = 32 << 20, replica_key: str | None = None
) -> ASGIApp:
    """An ASGI app serving ``runtime``'s model; with ``replica_key``, every request but
    ``GET /healthz`` must carry it."""
    openapi: dict[str, Any] = {}

    async def healthz(request: Request) -> Response:
        if runtime.status is ModelStatus.READY:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"status": runtime.status.value, "detail": runtime.readiness_detail()}, status_code=503
        )

    async def meta(request: Request) -> Response:
        return JSONResponse(runtime.model.manifest().model_dump(mode="json", exclude_none=True))

    async def openapi_json(request: Request) -> Response:
        if not openapi:
            openapi.update(openapi_document(runtime.model))
        return JSONResponse(openapi)

    async def setup(request: Request) -> Response:
        async with _payload(request) as (raw, uploads, _):
            await runtime.setup_async(raw, uploads)
        return JSONResponse({"status": runtime.status.value})

    async def command(request: Request) -> Response:
        cmd = runtime.command(request.path_params["command"])
        async with _payload(request) as (raw, uploads, from_form):
            outputs = await _unless_caller_leaves(
                request, runtime.call(cmd, raw, uploads, from_form=from_form)
            )
        if outputs is None:
            log.info("the caller of %s left before its answer: the call is dropped", cmd.name)
            return Response(status_code=CALLER_LEFT)
        return JSONResponse(outputs)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/meta", meta, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/setup", setup, methods=["POST"]),
            Route("/{command}", command, methods=["POST"]),
        ],
        exception_handlers={
            ModelCloudError: _problem_handler,
            HTTPException: _http_exception_handler,
            Exception: _unexpected_handler,
        },
    )
    return _RequestGuard(app, max_body_bytes, replica_key)


# ----------------------------------------------------------------------------- callers leaving


async def _unless_caller_leaves(request: Request, call: Coroutine[Any, Any, _T]) -> _T | None:
    """``call``'s result, or None when the caller disconnected first and ``call`` was
    cancelled. Called once the body has been read: the next message can then only be the
    caller leaving (uvicorn sends it when the connection closes)."""
    result: _T | None = None
    with anyio.CancelScope() as scope:
        # One watching task, not a task group: a group would wrap the call's errors (each a
        # problem document with its status) in an exception group.
        watcher = asyncio.create_task(_cancel_when_caller_leaves(request, scope))
        try:
            result = await call
        finally:
            watcher.cancel()
    return result


async def _cancel_when_caller_leaves(request: Request, scope: anyio.CancelScope) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


# ----------------------------------------------------------------------------- request bodies


@asynccontextmanager
async def _payload(
    request: Request,
) -> AsyncIterator[tuple[Mapping[str, Any], Mapping[str, Upload], bool]]:
    """The request's fields, uploads, and whether they came from a form (strings)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded" and await _is_json_object(request):
        # `curl -d '{"photo": ...}'` sends JSON labelled as a form: read it as the JSON it is.
        media_type = "application/json"
    if media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=_MAX_FORM_FILES, max_fields=_MAX_FORM_FIELDS)
        except MultiPartException as exc:
            raise MalformedRequest(f"the form data cannot be parsed: {exc.message}") from None
        except HTTPException as exc:  # starlette reports form limits this way
            raise MalformedRequest(f"the form data cannot be parsed: {exc.detail}") from None
        try:
            yield (*_split_form(form), True)
        finally:
            await form.close()
        return
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"send application/json or multipart/form-data, not {media_type}"
        )
    body = await request.body()
    if not body.strip():
        yield {}, {}, False
        return
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError: bad JSON, bad UTF-8, an integer past Python's 4,300-digit limit;
        # RecursionError: arrays or objects nested too deep to read.
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedRequest("the body must be a JSON object with one key per input")
    yield data, {}, False


async def _is_json_object(request: Request) -> bool:
    return (await request.body()).lstrip()[:1] == b"{"


def _split_form(form: FormData) -> tuple[dict[str, Any], dict[str, Upload]]:
    fields: dict[str, Any] = {}
    uploads: dict[str, Upload] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            uploads[key] = Upload(value.filename, value.file, value.content_type)
        else:
            fields[key] = value
    return fields, uploads


# ----------------------------------------------------------------------------- errors


def problem_response(error: ModelCloudError, instance: str | None = None) -> Response:
    problem = error.to_problem(instance=instance)
    return Response(
        problem.model_dump_json(exclude_none=True),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
    )


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ModelCloudError):  # pragma: no cover - registered for this class
        return await _unexpected_handler(request, exc)
    return problem_response(exc, request.url.path)


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    error: ModelCloudError
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        error = NotFound(f"no route {request.url.path}")
    elif status == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    else:
        error = MalformedRequest(str(getattr(exc, "detail", "bad request")))
    return problem_response(error, request.url.path)


async def _unexpected_handler(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem_response(ModelCloudError("an unexpected error occurred"), request.url.path)


# ----------------------------------------------------------------------------- middleware


_OPEN_PATHS = frozenset({"/healthz"})


class _RequestGuard:
    """Request ids, one log line per request, the replica key (a 401 before the body is
    read) and the body size limit (a fast 413)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, replica_key: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.replica_key = None if replica_key is None else replica_key.encode()
        self.key_header = REPLICA_KEY_HEADER.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        declared = headers.get(b"content-length")
        early: ModelCloudError | None = None
        if not self._key_accepted(scope["path"], headers):
            early = ReplicaKeyRefused(f"send this replica's key in {REPLICA_KEY_HEADER}")
        elif declared is not None and not declared.isdigit():
            early = MalformedRequest("Content-Length is not a number")
        elif declared is not None and int(declared) > self.max_body_bytes:
            early = PayloadTooLarge(f"the body is over the limit of {self.max_body_bytes} bytes")
        if early is not None:
            await problem_response(early, scope["path"])(scope, receive, send_with_id)
            self._log(scope, status, started, request_id)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(
                        f"the body is over the limit of {self.max_body_bytes} bytes"
                    )
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            self._log(scope, status, started, request_id)

    def _key_accepted(self, path: str, headers: dict[bytes, bytes]) -> bool:
        if self.replica_key is None or path in _OPEN_PATHS:
            return True
        # Constant time: the answer must not tell how much of a guess was right.
        return hmac.compare_digest(headers.get(self.key_header, b""), self.replica_key)

    @staticmethod
    def _log(scope: Scope, status: int, started: float, request_id: str) -> None:
        log.info(
            "%s %s %d %.1fms",
            scope["method"],
            scope["path"],
            status,
            (time.perf_counter() - started) * 1000,
            extra={"request_id": request_id, "status": status},
        )
