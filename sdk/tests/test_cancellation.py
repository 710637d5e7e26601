"""Issue 14: a caller that leaves gets its call cancelled. An input still queued behind the
model's concurrency limit never runs, an ``async def`` command is cancelled, and a
synchronous command already running finishes with its result thrown away.

The server runs under uvicorn on a real socket, since only a real connection can close."""

import asyncio
import threading
from pathlib import Path

import httpx

from modelcloud import Model
from modelcloud._files import FilePolicy
from modelcloud._runtime import ModelRuntime
from modelcloud._server import create_app
from modelcloud.data_types import text
from modelcloud_testing.polling import came_true
from modelcloud_testing.serving import leave_after_sending, listening


def runtime_of(model: Model, tmp_path: Path) -> ModelRuntime:
    runtime = ModelRuntime(
        model, FilePolicy(roots=(tmp_path,)), concurrency=1, scratch_dir=tmp_path
    )
    runtime.setup({})
    return runtime


def waiting(runtime: ModelRuntime) -> int:
    """Calls queued behind the concurrency limit."""
    return runtime._limiter.statistics().tasks_waiting


async def test_a_queued_call_whose_caller_left_never_runs(tmp_path: Path) -> None:
    ran: list[str] = []
    started = threading.Event()
    release = threading.Event()
    model = Model()

    @model.command("work", inputs={"name": text()}, outputs={"done": text()})
    def work(_, inputs):
        ran.append(inputs["name"])  # the side effect a dropped call must not have
        if inputs["name"] == "a":
            started.set()
            release.wait(10)
        return {"done": inputs["name"]}

    runtime = runtime_of(model, tmp_path)
    async with listening(create_app(runtime)) as port, httpx.AsyncClient(timeout=30) as client:
        url = f"http://127.0.0.1:{port}"
        first = asyncio.create_task(client.post(f"{url}/work", json={"name": "a"}))
        assert await asyncio.to_thread(started.wait, 10)
        writer = await leave_after_sending(port, "/work", b'{"name": "b"}')
        assert await came_true(lambda: waiting(runtime) == 1)  # b waits behind a
        writer.close()
        await writer.wait_closed()
        left_the_queue = await came_true(lambda: waiting(runtime) == 0)
        release.set()
        assert (await first).json() == {"done": "a"}
        after = await client.post(f"{url}/work", json={"name": "c"})
        assert after.json() == {"done": "c"}
    assert ran == ["a", "c"]  # b's input never reached the model
    assert left_the_queue  # and it left the queue while a still ran


async def test_an_async_command_is_cancelled_when_its_caller_leaves(tmp_path: Path) -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()
    model = Model()

    @model.command("wait", inputs={}, outputs={"done": text()})
    async def wait(_, inputs):
        entered.set()
        try:
            await asyncio.Event().wait()  # only a cancellation ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"done": "never"}

    async with listening(create_app(runtime_of(model, tmp_path))) as port:
        writer = await leave_after_sending(port, "/wait", b"{}")
        await asyncio.wait_for(entered.wait(), 10)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(cancelled.wait(), 5)


async def test_a_running_sync_command_finishes_and_the_next_call_runs(tmp_path: Path) -> None:
    """Documented limit: a thread cannot be killed, so the running call ends on its own; its
    result goes nowhere and the model takes the next call."""
    finished: list[str] = []
    started = threading.Event()
    release = threading.Event()
    model = Model()

    @model.command("work", inputs={"name": text()}, outputs={"done": text()})
    def work(_, inputs):
        if inputs["name"] == "a":
            started.set()
            release.wait(10)
        finished.append(inputs["name"])
        return {"done": inputs["name"]}

    runtime = runtime_of(model, tmp_path)
    async with listening(create_app(runtime)) as port, httpx.AsyncClient(timeout=30) as client:
        writer = await leave_after_sending(port, "/work", b'{"name": "a"}')
        assert await asyncio.to_thread(started.wait, 10)
        writer.close()
        await writer.wait_closed()
        release.set()
        after = await client.post(f"http://127.0.0.1:{port}/work", json={"name": "b"})
        assert after.json() == {"done": "b"}
    assert finished == ["a", "b"]
