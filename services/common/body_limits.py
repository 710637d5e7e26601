"""Request body limits, per route, enforced while the body arrives and after the token.

First, headers: more than :data:`MAX_HEADER_BYTES` of them is answered 431 before anything
else looks at them (the HTTP server would take far more, and each service would otherwise
parse, log and forward them all; `tests/fuzz` sends 64 KB of headers).

Then three rules, in this order, each applied before the bytes it guards are read:

1. **No token, no body, no validation.** Every route that takes a body needs a token, so a
   request with a body and no token is answered 401 at once, unread. (FastAPI reads and
   parses a JSON body before the dependency that checks the token runs: an anonymous
   200 MiB JSON body used to cost 600 MiB of memory before its 401.) So is a request with
   no token to any ``/v1/`` route but the few public ones (:data:`PUBLIC_API`), before
   routing: FastAPI validates the path, query and body before the token, and a caller
   with no token was told which of its parameters were wrong (422) instead of 401.
2. **Each route its limit.** A body is capped at the service's default (1 MiB for JSON
   APIs) unless its route is given a larger limit (uploads). A declared ``Content-Length``
   over the limit is answered 413 before a byte is read; a chunked body is counted as it
   arrives and refused the moment it passes the limit, so at most the limit is ever read.
   The route is known once the app first asks for the body (routing has run by then), so
   that is where the limit is looked up, with no second routing pass here.
3. **The token before a large body.** A body past the default is read only once the
   service's token check (``TokenCheck``) accepts the caller: a bad token sends at most the
   default, never the route's upload limit.

Why not FastAPI's own ``max_body_size``: it is fixed when a route is declared, at import,
while these limits come from the settings ``create_app`` is given; and its 413 is plain
text, where every answer here is problem+json.
"""

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.problems import (
    HeadersTooLarge,
    PayloadTooLarge,
    ServiceProblem,
    Unauthorized,
    problem_response,
)

__all__ = [
    "DEFAULT_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "PUBLIC_API",
    "BodyLimit",
    "BodyLimits",
    "Endpoint",
    "TokenCheck",
    "registry_token_check",
]

DEFAULT_BODY_BYTES = 1 << 20
# Names and values together: a token is under 100 bytes, a browser's headers a few KB.
MAX_HEADER_BYTES = 16 << 10
# The /v1/ routes that answer without a token: the runs page and its assets (they carry no
# data; the page sends the token it reads from the URL fragment) and the transfer limits.
PUBLIC_API = re.compile(r"/v1/transfers|/v1/projects/[^/]+/runs/(?:dashboard|assets/[^/]+)")
# Raises a problem (401, 503, ...) unless the request's token is valid.
TokenCheck = Callable[[HTTPConnection], Awaitable[None]]
Endpoint = Callable[..., Any]
log = structlog.get_logger("modelcloud.http")


@dataclass(frozen=True)
class BodyLimits:
    """``default`` bytes for every route, ``routes`` (endpoint function -> bytes) for those
    that take more; ``token_check`` runs before a body past ``default`` is read."""

    default: int = DEFAULT_BODY_BYTES
    routes: Mapping[Endpoint, int] = field(default_factory=dict)
    token_check: TokenCheck | None = None


class _Refused(HTTPException):
    """Raised into the app from ``receive``. An ``HTTPException``, because FastAPI's body
    parsing passes those on as they are and turns any other error into a 400; the
    middleware answers with ``problem`` whatever the app makes of it."""

    def __init__(self, problem: ServiceProblem) -> None:
        super().__init__(problem.status, problem.detail)
        self.problem = problem


class BodyLimit:
    """ASGI middleware applying :class:`BodyLimits` to every HTTP request."""

    def __init__(self, app: ASGIApp, *, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            too_large = HeadersTooLarge(f"the headers are over {MAX_HEADER_BYTES} bytes")
            await problem_response(too_large, scope["path"])(scope, receive, send)
            return
        guard = _Guard(self.limits, scope, receive)
        if guard.anonymous and (guard.has_body or _needs_token(scope["path"])):
            await problem_response(_anonymous(), scope["path"])(scope, receive, send)
            return
        answered = False  # the refusal, in place of what the app answered
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal answered, started
            if answered:
                return
            if guard.refusal is not None and not started:
                # The app answered a body it could not read (FastAPI says 400): the reason
                # it could not is the answer.
                answered = True
                await problem_response(guard.refusal, scope["path"])(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guard.receive, guarded_send)
        except Exception:
            if guard.refusal is None:
                raise
            if not started and not answered:
                await problem_response(guard.refusal, scope["path"])(scope, receive, send)
            elif not answered:
                # Refused after the app had begun its answer (it streams as it reads): the
                # connection ends there, which is all that is left to say.
                log.info("body refused mid-answer", path=scope["path"])
            return
        if guard.refusal is not None and not started and not answered:
            await problem_response(guard.refusal, scope["path"])(scope, receive, send)


def _needs_token(path: str) -> bool:
    return path.startswith("/v1/") and PUBLIC_API.fullmatch(path) is None


def _anonymous() -> Unauthorized:
    return Unauthorized("send an API token: Authorization: Bearer <token>")


class _Guard:
    """One request's count of body bytes and the rules above, applied as they arrive."""

    def __init__(self, limits: BodyLimits, scope: Scope, receive: Receive) -> None:
        self.limits = limits
        self.scope = scope
        self._receive = receive
        self.refusal: ServiceProblem | None = None
        self.received = 0
        self.limit: int | None = None  # the route's, looked up once a body needs it
        self.token_checked = False
        headers = dict(scope["headers"])
        # "Bearer" with nothing after it is no token either.
        credentials = headers.get(b"authorization", b"").strip().split(None, 1)
        self.anonymous = len(credentials) < 2 or not credentials[1].strip()
        declared = headers.get(b"content-length")
        self.declared = int(declared) if declared is not None and declared.isdigit() else None
        self.has_body = bool(self.declared) or b"transfer-encoding" in headers

    async def receive(self) -> Message:
        if self.refusal is not None:  # the app reads on after a refusal: nothing more comes
            raise _Refused(self.refusal)
        if self.limit is None and self.declared is not None and self.declared > self.limits.default:
            await self._past_default(self.declared)  # before the first byte is read
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.default:
                await self._past_default(self.received)
        return message

    async def _past_default(self, size: int) -> None:
        """``size`` bytes (declared or received so far) are more than the default allows."""
        if self.limit is None:
            # Routing has run by now and named the endpoint (none for a path with no route).
            endpoint: Endpoint | None = self.scope.get("endpoint")
            found = self.limits.routes.get(endpoint) if endpoint is not None else None
            self.limit = found or self.limits.default
        if size > self.limit:
            self._refuse(PayloadTooLarge(f"the body is over the limit of {self.limit} bytes"))
        if not self.token_checked and self.limits.token_check is not None:
            self.token_checked = True
            try:
                await self.limits.token_check(HTTPConnection(self.scope))
            except ServiceProblem as problem:
                self._refuse(problem)

    def _refuse(self, problem: ServiceProblem) -> NoReturn:
        self.refusal = problem
        raise _Refused(problem)


async def registry_token_check(connection: HTTPConnection) -> None:
    """The :data:`TokenCheck` of a service that asks the registry who a token belongs to
    (its :class:`~services.common.access.RegistryAccess` at ``app.state.access``, whose
    answers are cached)."""
    await connection.app.state.access.identify(connection.headers.get("authorization"))
