"""Reading objects from S3 by presigned URL, with the standard library's HTTP client.

Large pulls spent most of their client CPU in the HTTP client: httpx (h11 underneath)
parses and buffers a body in Python, where ``http.client`` reads straight into each chunk.
A 1 GiB pull cost the pipe's client 3.8 CPU seconds through httpx and 1.8 this way, the
SHA-256 check included (bench/RESULTS.md, issue 4). Presigned URLs need nothing else from
a client (no auth, no redirects, no cookies), so they are read this way; each thread keeps
one connection per host.
"""

import http.client
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx

from modelcloud.pipe._retries import TransferCut, retryable_status
from modelcloud.pipe.errors import PipeError


class ObjectReader:
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @contextmanager
    def get(
        self, url: str, name: str, *, first: int = 0, last: int | None = None
    ) -> Iterator["Body"]:
        """GET ``url`` (bytes ``first`` to ``last`` when given); the body is read in chunks."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {} if last is None else {"Range": f"bytes={first}-{last}"}
        for attempt in (1, 2):  # a kept connection the server has closed meanwhile
            connection = self._connection(parts.scheme, parts.netloc)
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if attempt == 2:
                    raise TransferCut(f"cannot pull {name}: {exc}", name) from exc
                continue
            break
        try:
            if response.status not in (200, 206):
                detail = response.read(300).decode("utf-8", "replace")
                failed = TransferCut if retryable_status(response.status) else PipeError
                raise failed(f"{name}: the object store answered {response.status}: {detail}", name)
            yield Body(response, name)
            response.read()  # the rest, if any: the connection can be used again
        except BaseException:
            connection.close()
            raise

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        kept: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "connections", {}
        )
        connection = kept.get((scheme, netloc))
        if connection is None:
            if scheme == "https":
                if self._tls is None:
                    self._tls = httpx.create_ssl_context()  # httpx's trust settings
                connection = http.client.HTTPSConnection(
                    netloc, timeout=self._timeout_s, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(netloc, timeout=self._timeout_s)
            kept[(scheme, netloc)] = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()


class Body:
    def __init__(self, response: http.client.HTTPResponse, name: str) -> None:
        self._response = response
        self._name = name
        self.status = response.status  # 200: a range asked for was ignored, the whole came

    def chunks(self, size: int) -> Iterator[bytes]:
        try:
            while chunk := self._response.read(size):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise TransferCut(f"cannot pull {self._name}: {exc}", self._name) from exc
        # http.client ends a body cut short as if it were complete: its length says it is not.
        if self._response.length:
            left = self._response.length
            raise TransferCut(f"cannot pull {self._name}: cut {left} bytes short", self._name)
