"""Structured logs: one JSON object per line, with the request and correlation ids bound,
and anything that looks like a token redacted before it is written."""

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import structlog

_TOKEN = re.compile(r"\b(mc_[A-Za-z0-9_-]{8})[A-Za-z0-9_-]+")
# Whatever follows "Bearer" is a credential, whichever scheme issued it.
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?!\[redacted\])[^\s\"',;]+")
_SECRET_KEYS = ("authorization", "token", "password", "secret", "api_key")


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace secrets in any field, nested ones included: keys named like secrets, bearer
    credentials and ModelCloud tokens anywhere in text.

    It runs last, after exceptions are formatted, so an exception's text is covered too.
    """
    for key, value in list(event.items()):
        event[key] = _redacted(key, value)
    return event


def _redacted(key: object, value: Any) -> Any:
    if (
        isinstance(key, str)
        and key != "token_id"
        and any(word in key.lower() for word in _SECRET_KEYS)
    ):
        return "[redacted]"
    if isinstance(value, str):
        return _TOKEN.sub(r"\1…[redacted]", _BEARER.sub(r"\1[redacted]", value))
    if isinstance(value, Mapping):
        return {k: _redacted(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(None, item) for item in value]
    return value


def configure_logging(
    service: str,
    log_format: Literal["json", "console"] = "json",
    level: str = "info",
) -> None:
    """Route structlog and the standard library's logging through one JSON renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,  # after format_exc_info: an exception's text may hold a token
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.bind_contextvars(service=service)
    # uvicorn's access log would print query strings and duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request it makes at info (health checks every few seconds, token
    # checks): the services log their own requests, with ids, already.
    logging.getLogger("httpx").setLevel(logging.WARNING)
