"""Fixtures for SDK tests: tiny models declared per test, served in-process."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from modelcloud import Model
from modelcloud._files import FilePolicy
from modelcloud._runtime import ModelRuntime
from modelcloud._server import create_app

ServeModel = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``serve(model, **runtime_kwargs)`` sets the model up and returns a client for it."""
    clients: list[httpx.AsyncClient] = []

    def start(
        model: Model,
        *,
        options: dict[str, object] | None = None,
        max_body_bytes: int = 1 << 20,
        files: FilePolicy | None = None,
        concurrency: int = 1,
        run_setup: bool = True,
    ) -> httpx.AsyncClient:
        runtime = ModelRuntime(
            model,
            files or FilePolicy(roots=(tmp_path,)),
            concurrency=concurrency,
            scratch_dir=tmp_path,
        )
        if run_setup:
            runtime.setup(options or {})
        app = create_app(runtime, max_body_bytes=max_body_bytes)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model")
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
