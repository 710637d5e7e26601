"""RFC 9457 problem details for every service: one exception tree, one renderer.

Exception tree (each class carries its HTTP status)::

    ServiceProblem          500
    ├── BadRequest          400
    ├── Unauthorized        401  no or invalid token (answered with WWW-Authenticate)
    ├── Forbidden           403  a token without the needed role on a visible project
    ├── NotFound            404  absent, or another project's data
    ├── MethodNotAllowed    405
    ├── Conflict            409  a name taken, a lifecycle step out of order
    ├── PayloadTooLarge     413
    ├── HeadersTooLarge     431  more header bytes than any client of ours sends
    ├── InvalidInput        422  names each field
    ├── BadGateway          502  an upstream (a model replica) answered wrongly or vanished
    ├── ServiceUnavailable  503
    └── GatewayTimeout      504  an upstream took longer than allowed

FastAPI's own validation errors, and pydantic's from a model a route builds from the caller's
data, become ``InvalidInput`` with the offending fields; anything
unexpected becomes a bare 500 problem, logged with its traceback but never shown.
"""

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from modelcloud_proto.problem import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX, FieldError, Problem

log = logging.getLogger(__name__)


class ServiceProblem(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self, detail: str | None = None, *, errors: Iterable[FieldError] = (), **extra: Any
    ) -> None:
        self.detail = detail
        self.errors = list(errors)
        self.extra = extra
        super().__init__(detail or self.title)

    def to_problem(self, instance: str | None = None) -> Problem:
        return Problem(
            type=PROBLEM_TYPE_PREFIX + self.slug,
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            errors=self.errors,
            **self.extra,
        )


class BadRequest(ServiceProblem):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ServiceProblem):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(ServiceProblem):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ServiceProblem):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ServiceProblem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ServiceProblem):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ServiceProblem):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class HeadersTooLarge(ServiceProblem):
    status, slug, title = 431, "headers-too-large", "Request headers too large"


class InvalidInput(ServiceProblem):
    status, slug, title = 422, "invalid-input", "Invalid input"

    def __init__(
        self,
        field: str | None = None,
        message: str | None = None,
        *,
        errors: Iterable[FieldError] = (),
    ) -> None:
        collected = list(errors)
        if field is not None:
            collected.insert(0, FieldError(field=field, message=message or "is invalid"))
        super().__init__(
            "; ".join(f"{e.field}: {e.message}" for e in collected) or None, errors=collected
        )


class BadGateway(ServiceProblem):
    status, slug, title = 502, "bad-gateway", "Bad gateway"


class ServiceUnavailable(ServiceProblem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class GatewayTimeout(ServiceProblem):
    status, slug, title = 504, "gateway-timeout", "Gateway timeout"


def problem_schema() -> dict[str, Any]:
    """The JSON schema of a problem document with its parts written out in place: an
    OpenAPI document keeps schemas under ``components``, so pydantic's ``#/$defs/...``
    references would point at nothing once this sits inside a response."""
    schema = Problem.model_json_schema()
    parts: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(parts[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


def problem_responses(statuses: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for problem answers: status -> when it is given."""
    schema = problem_schema()
    return {
        status: {"description": text, "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
        for status, text in statuses.items()
    }


def conflict(when: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that answers 409 ``when``."""
    return problem_responses({409: when})


def problem_response(
    problem: ServiceProblem, instance: str | None = None, *, retry_after_s: int | None = None
) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(problem, Unauthorized) else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return Response(
        problem.to_problem(instance).model_dump_json(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic/FastAPI error entries as field errors, locations dotted (``body.name``)."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header", "form"):
            loc = loc[1:] or loc
        out.append(FieldError(field=".".join(loc) or "body", message=str(error.get("msg"))))
    return out


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ServiceProblem):  # pragma: no cover - registered for it
            return await on_unexpected(request, exc)
        return problem_response(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        return problem_response(InvalidInput(errors=field_errors(errors)), request.url.path)

    async def on_model_validation(request: Request, exc: Exception) -> Response:
        # A model built by hand from the caller's data (a batch, a patch merged into what
        # is stored) refuses it: the caller's input, not a fault here.
        errors = exc.errors() if isinstance(exc, ValidationError) else []
        return problem_response(InvalidInput(errors=field_errors(errors)), request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = str(getattr(exc, "detail", "")) or None
        problem: ServiceProblem
        if status == 404:
            problem = NotFound(f"no route {request.url.path}")
        elif status == 405:
            problem = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif status == 413:
            problem = PayloadTooLarge(detail)
        elif status == 401:
            problem = Unauthorized(detail)
        else:
            problem = BadRequest(detail)
        return problem_response(problem, request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(ServiceProblem("an unexpected error occurred"), request.url.path)

    app.add_exception_handler(ServiceProblem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_model_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
