"""Retrying transfers that were cut: a dropped connection, a reset, a server that answered
5xx or 429 (busy) is tried again a few times, waiting longer each time; a 4xx never is
(the request itself is wrong, and would be again).

What is retried is what can be sent twice: a file's whole upload (the file store keeps
nothing of a cut one), one part of a direct upload (S3 overwrites a part sent again), a
download from the byte where it stopped (HTTP ``Range``; the SHA-256 is checked at the end,
over every byte, however many requests brought them).
"""

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import httpx

from modelcloud.pipe.errors import PipeError

log = logging.getLogger("modelcloud.pipe")


class TransferCut(PipeError):
    """A transfer that failed in a way worth trying again: the connection dropped, or the
    server answered 5xx or 429."""


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


@dataclass(frozen=True)
class Retries:
    """How often and how long to try a cut transfer again."""

    attempts: int = 5  # in all, the first one included
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0

    def pause(self, failures: int, retry_after: str | None = None) -> None:
        """Wait before try ``failures + 1``: the server's ``Retry-After`` (seconds) when it
        sent one, else exponential backoff with jitter, never over ``max_delay_s``."""
        delay = self.first_delay_s * 2 ** (failures - 1) * random.uniform(0.5, 1)  # noqa: S311 - jitter
        if retry_after is not None and retry_after.strip().isdigit():
            delay = float(retry_after)
        time.sleep(min(delay, self.max_delay_s))

    def send(
        self,
        request: Callable[[], httpx.Response],
        name: str | None,
        *,
        what: str,
        resend: bool = True,
    ) -> httpx.Response:
        """``request()`` (to ``what``: "push model.db") until it answers something other
        than 5xx/429, or the tries are spent (then its last answer, for the caller to
        report); a connection that fails every time raises :class:`PipeError`.
        ``resend=False``: a request that must not reach the server twice is retried only
        when it never left (the connection could not be made) or the server turned it
        away (503, 429)."""
        failures = 0
        while True:
            try:
                response = request()
            except httpx.TransportError as exc:
                failures += 1
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if failures >= self.attempts or not (resend or never_sent):
                    raise PipeError(f"cannot {what}: {exc}", name) from exc
                log.info("retrying: %s: %s", what, exc)
                self.pause(failures)
                continue
            except httpx.HTTPError as exc:  # too many redirects, an undecodable body
                raise PipeError(f"cannot {what}: {exc}", name) from exc
            refused_unread = response.status_code in (429, 503)
            if not retryable_status(response.status_code) or not (resend or refused_unread):
                return response
            failures += 1
            if failures >= self.attempts:
                return response
            log.info("retrying: %s: answered %d", what, response.status_code)
            response.close()
            self.pause(failures, response.headers.get("retry-after"))


Opener = Callable[[int], AbstractContextManager[Iterator[bytes]]]


def resumed(open_from: Opener, name: str, retries: Retries) -> Iterator[bytes]:
    """The chunks of a download, which ``open_from(start)`` opens from byte ``start``; a cut
    one is opened again from the first byte not received yet. Each try that brings bytes
    starts the count of failures afresh (a long pull over a poor link goes on while it
    moves), tries that bring none end it after ``retries.attempts``; so do four times as
    many cuts in all."""
    received = 0
    failures = cuts = 0
    while True:
        try:
            with open_from(received) as chunks:
                for chunk in chunks:
                    received += len(chunk)
                    failures = 0
                    yield chunk
            return
        except (TransferCut, httpx.TransportError) as exc:
            failures += 1
            cuts += 1
            if failures >= retries.attempts or cuts >= 4 * retries.attempts:
                if isinstance(exc, PipeError):
                    raise
                raise PipeError(f"cannot pull {name}: {exc}", name) from exc
            log.info("resuming %s from byte %d: %s", name, received, exc)
            retries.pause(failures)
        except httpx.HTTPError as exc:  # no cut (a body it cannot decode, redirects): final
            raise PipeError(f"cannot pull {name}: {exc}", name) from exc


def skipped(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """``chunks`` less their first ``count`` bytes (a server that ignored a range sends
    the whole again)."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0
