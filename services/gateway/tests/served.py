"""Serving an ASGI app (a model's SDK server, the gateway) on a real socket, for the tests
that need a connection to close or the gateway's aiohttp client to reach a replica."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def listening(app: Any) -> AsyncIterator[int]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 (the port), stopped after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # the kernel accepts from now on: nothing to wait for
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def until(check: Callable[[], bool], timeout: float = 5) -> bool:
    """Whether ``check()`` came true within ``timeout`` s (state with no event to await)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
