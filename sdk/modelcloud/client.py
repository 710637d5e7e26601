"""A small client for a model service (a replica, or later a gateway URL).

>>> client = ModelClient("http://localhost:9000")
>>> client.call("classify", photo=Path("cat.jpg"))
{'label': 'tabby, tabby cat'}

Paths (and open binary files) are sent as multipart uploads; other values as JSON, or as
form fields next to uploads. Error responses come back as the typed exceptions of
:mod:`modelcloud.exceptions`.
"""

import json
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
from pydantic import ValidationError

from modelcloud.exceptions import ModelCloudError, ModelNotReady, error_from_problem
from modelcloud_proto.manifest import ModelManifest
from modelcloud_proto.problem import Problem

__all__ = ["ModelClient"]


class ModelClient:
    def __init__(self, url: str, *, timeout: float = 60.0, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def meta(self) -> ModelManifest:
        return ModelManifest.model_validate(self._checked(self._http.get("/meta")))

    def healthz(self) -> dict[str, Any]:
        response = self._http.get("/healthz")
        body: dict[str, Any] = response.json()
        return body

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Block until ``/healthz`` says ready; raise :class:`ModelNotReady` after ``timeout``."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                health = self.healthz()
            except httpx.TransportError as exc:
                last = str(exc) or type(exc).__name__
            else:
                if health.get("status") == "ready":
                    return
                last = str(health.get("detail") or health.get("status"))
            time.sleep(interval)
        raise ModelNotReady(f"not ready after {timeout:.0f}s: {last}")

    def call(self, command: str, /, **inputs: Any) -> dict[str, Any]:
        """Run ``command`` with ``inputs``; returns its outputs."""
        return self.call_with(command, inputs)

    def call_with(
        self, command: str, inputs: Mapping[str, Any], *, form: bool = False
    ) -> dict[str, Any]:
        """Like :meth:`call`; ``form=True`` sends every value as a form field (text that the
        server converts to the declared type), as a command line does."""
        uploads: dict[str, tuple[str, IO[bytes]]] = {}
        fields: dict[str, Any] = {}
        with ExitStack() as stack:
            for name, value in inputs.items():
                if isinstance(value, Path):
                    uploads[name] = (value.name, stack.enter_context(value.open("rb")))
                elif hasattr(value, "read"):
                    uploads[name] = (Path(getattr(value, "name", name)).name, value)
                else:
                    fields[name] = value
            if uploads or form:
                text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
                response = self._http.post(f"/{command}", data=text, files=uploads or None)
            else:
                response = self._http.post(f"/{command}", json=fields)
        result: dict[str, Any] = self._checked(response)
        return result

    @staticmethod
    def _checked(response: httpx.Response) -> Any:
        if response.is_success:
            return response.json()
        try:
            problem = Problem.model_validate_json(response.content)
        except ValidationError:
            raise ModelCloudError(f"HTTP {response.status_code}: {response.text[:200]}") from None
        raise error_from_problem(problem)
