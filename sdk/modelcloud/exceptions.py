"""The errors a model service answers with, each carrying its HTTP status.

Exception tree::

    ModelCloudError                 500  base class; never shows a traceback to the caller
    ├── InvalidInput                422  one or more inputs are wrong (names each field)
    ├── MalformedRequest            400  the body is not JSON / not a form
    ├── UnknownCommand              404  no such command on this model
    ├── NotFound                    404  no such route
    ├── MethodNotAllowed            405
    ├── PayloadTooLarge             413  the body is over the server's limit
    ├── UnsupportedMediaType        415  neither JSON nor multipart form data
    ├── ModelNotReady               503  setup has not finished (or needs options)
    ├── SetupFailed                 500  setup raised
    ├── ModelError                  500  the command raised
    └── InvalidOutput               500  the command's return value does not match its outputs

Model code may raise :class:`InvalidInput` itself to reject a value it cannot use. The
client side (:mod:`modelcloud.client`) turns a problem response back into the same class.
"""

from collections.abc import Iterable
from typing import Any, ClassVar

from modelcloud_proto.problem import PROBLEM_TYPE_PREFIX, FieldError, Problem

__all__ = [
    "FieldError",
    "InvalidInput",
    "InvalidOutput",
    "MalformedRequest",
    "MethodNotAllowed",
    "ModelCloudError",
    "ModelError",
    "ModelNotReady",
    "NotFound",
    "PayloadTooLarge",
    "SetupFailed",
    "UnknownCommand",
    "UnsupportedMediaType",
    "error_from_problem",
]


class ModelCloudError(Exception):
    """Base of every error a model service reports; ``status`` is its HTTP status."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, *, errors: Iterable[FieldError] = ()) -> None:
        self.detail = detail
        self.errors = list(errors)
        super().__init__(detail or self.title)

    @classmethod
    def problem_type(cls) -> str:
        return PROBLEM_TYPE_PREFIX + cls.slug

    def to_problem(self, instance: str | None = None, **extra: Any) -> Problem:
        return Problem(
            type=self.problem_type(),
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            errors=self.errors,
            **extra,
        )


class InvalidInput(ModelCloudError):
    """An input (or setup option) has a wrong value; ``errors`` names each field.

    ``InvalidInput("photo", "is completely black")`` rejects one field from model code.
    """

    status = 422
    slug = "invalid-input"
    title = "Invalid input"

    def __init__(
        self,
        field: str | None = None,
        message: str | None = None,
        *,
        errors: Iterable[FieldError] = (),
        detail: str | None = None,
    ) -> None:
        errors = list(errors)
        if field is not None:
            errors.insert(0, FieldError(field=field, message=message or "is invalid"))
        if detail is None:
            detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or None
        super().__init__(detail, errors=errors)


class MalformedRequest(ModelCloudError):
    status = 400
    slug = "malformed-request"
    title = "Malformed request"


class UnknownCommand(ModelCloudError):
    status = 404
    slug = "unknown-command"
    title = "Unknown command"


class NotFound(ModelCloudError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(ModelCloudError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class PayloadTooLarge(ModelCloudError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(ModelCloudError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class ModelNotReady(ModelCloudError):
    status = 503
    slug = "model-not-ready"
    title = "Model not ready"


class SetupFailed(ModelCloudError):
    status = 500
    slug = "setup-failed"
    title = "Model setup failed"


class ModelError(ModelCloudError):
    status = 500
    slug = "model-error"
    title = "The model failed on this input"


class InvalidOutput(ModelCloudError):
    status = 500
    slug = "invalid-output"
    title = "The model returned an invalid output"


_BY_TYPE: dict[str, type[ModelCloudError]] = {
    cls.problem_type(): cls
    for cls in (
        ModelCloudError,
        InvalidInput,
        MalformedRequest,
        UnknownCommand,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        UnsupportedMediaType,
        ModelNotReady,
        SetupFailed,
        ModelError,
        InvalidOutput,
    )
}


def error_from_problem(problem: Problem) -> ModelCloudError:
    """Rebuild the typed exception a server reported as a problem document."""
    cls = _BY_TYPE.get(problem.type, ModelCloudError)
    if cls is InvalidInput:
        return InvalidInput(errors=problem.errors, detail=problem.detail)
    return cls(problem.detail or problem.title, errors=problem.errors)
