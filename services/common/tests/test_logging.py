"""Tokens never reach the logs: not in a message, a field, a header value or an exception's
text, whichever logger (structlog or the standard library's) writes the line."""

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from services.common.logging import configure_logging

TOKEN = "mc_" + "Zq3xK9pL2vR7tY1wE5uI8oA4sD6fG0hJ"  # the shape the registry issues
OTHER_SCHEME = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The lines the services' logging writes, from a fresh configuration; the previous
    root handlers and structlog defaults are put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("test", "json", "info")
    out = io.StringIO()
    (handler,) = root.handlers
    captured = logging.StreamHandler(out)
    captured.setFormatter(handler.formatter)
    root.handlers[:] = [captured]
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_bearer_header_is_redacted_in_fields_and_in_text(logs: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.info("request", authorization=f"Bearer {TOKEN}", headers={"Authorization": OTHER_SCHEME})
    log.info("forwarding", upstream=f"Authorization: Bearer {OTHER_SCHEME}")
    logging.getLogger("std").warning("sent Authorization: Bearer %s to the builder", TOKEN)

    written = logs.getvalue()
    assert TOKEN not in written
    assert OTHER_SCHEME not in written
    first, second, third = lines(logs)
    assert first["authorization"] == "[redacted]"
    assert first["headers"] == {"Authorization": "[redacted]"}
    assert second["upstream"] == "Authorization: Bearer [redacted]"
    assert third["event"] == "sent Authorization: Bearer [redacted] to the builder"


def test_a_token_anywhere_in_a_message_keeps_only_its_prefix(logs: io.StringIO) -> None:
    structlog.get_logger("test").info(f"token {TOKEN} issued", names=[f"x {TOKEN}"])
    (line,) = lines(logs)
    assert TOKEN not in logs.getvalue()
    assert line["event"] == f"token {TOKEN[:11]}…[redacted] issued"
    assert line["names"] == [f"x {TOKEN[:11]}…[redacted]"]


def test_a_token_in_an_exceptions_text_is_redacted(logs: io.StringIO) -> None:
    def check(token: str) -> None:
        raise PermissionError(f"registry refused token {token}")

    try:
        check(TOKEN)
    except PermissionError:
        logging.getLogger("std").exception("token check failed")
        structlog.get_logger("test").exception("token check failed")

    assert TOKEN not in logs.getvalue()
    for line in lines(logs):
        # The traceback itself is still there, only the secret is gone.
        assert "Traceback (most recent call last)" in line["exception"]
        assert (
            f"PermissionError: registry refused token {TOKEN[:11]}…[redacted]"
            in (line["exception"])
        )


def test_an_ordinary_line_is_left_alone(logs: io.StringIO) -> None:
    token_id = str(uuid.uuid4())  # an id, not a secret: kept
    structlog.get_logger("test").info("request", path="/v1/tokens", token_id=token_id, status=201)
    (line,) = lines(logs)
    assert line["path"] == "/v1/tokens"
    assert line["token_id"] == token_id
    assert line["status"] == 201
    assert line["service"] == "test"
