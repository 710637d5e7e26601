"""Serving an ASGI app in a test: on a real socket (a model's SDK server, the gateway), for
the tests that need a connection to close or an aiohttp client to reach it, or in-process
with its lifespan entered, and a caller that leaves without waiting for its answer."""

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


@asynccontextmanager
async def listening(app: Any) -> AsyncIterator[int]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 (the port), stopped after; its
    lifespan is the caller's to enter."""
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


@asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` started (its lifespan entered) and a client calling it in-process."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        yield client


async def leave_after_sending(
    port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None
) -> asyncio.StreamWriter:
    """A caller that sends its JSON ``POST path`` whole and reads no answer: closing the
    returned writer is the caller leaving."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = {
        "Host": f"127.0.0.1:{port}",
        **(headers or {}),
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in lines.items())
    writer.write(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
    await writer.drain()
    return writer
