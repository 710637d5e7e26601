"""Builds with the venv backend: a bundle becomes an environment, a code-only change reuses
it, and every kind of failure ends in a clear failed state naming its step."""

import asyncio
import contextlib
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from modelcloud_testing.deployments import build, log_of, request_build
from modelcloud_testing.platforms import Platform, greeter, remove_test_images
from modelcloud_testing.polling import wait_for
from services.builder.backends.processes import all_pids, process_alive

SLOW_TO_BUILD = pytest.mark.timeout(600)
FAILING_STEP = "python -c \"print('boom'); raise SystemExit(3)\""


@SLOW_TO_BUILD
async def test_a_code_only_change_reuses_the_environment(platform: Platform) -> None:
    first = await build(platform, "1.0", greeter("hello"))
    assert first["state"] == "built", first["state_detail"]
    second = await build(platform, "1.1", greeter("good morning"))
    assert second["state"] == "built", second["state_detail"]
    (old,) = await platform.builds("1.0")
    (new,) = await platform.builds("1.1")
    assert new["state"] == "succeeded"
    assert new["reused_environment"] is True
    assert "reusing the environment" in await log_of(platform, new["id"])
    assert "build succeeded" in await log_of(platform, old["id"])


@SLOW_TO_BUILD
async def test_build_logs_stream_as_server_sent_events(platform: Platform) -> None:
    await build(platform, "1.0", greeter())
    (done,) = await platform.builds("1.0")
    streamed = await platform.builder.get(
        f"/v1/projects/vision/builds/{done['id']}/logs", params={"follow": "true"}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "data: build succeeded\n\n" in streamed.text
    assert streamed.text.endswith("event: end\ndata: succeeded\n\n")


class _Server(uvicorn.Server):
    """Leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` (its lifespan already running) on a real socket: the in-process transport
    hands a response over only once it is complete, so it cannot show a live stream."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class EventStream:
    """A build log followed as Server-Sent Events: its lines, then the ``end`` event."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        self._lines = response.aiter_lines()
        self.end: str | None = None

    async def next_line(self) -> str | None:
        """The next log line, or ``None`` once the stream ended (``end`` holds the state)."""
        event = "message"
        async for line in self._lines:
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
                if event == "end":
                    self.end = data
                    return None
                return data
        return None

    async def until(self, wanted: str) -> list[str]:
        """The lines up to and including ``wanted``, or all of them if it never comes."""
        seen = []
        while (line := await self.next_line()) is not None:
            seen.append(line)
            if line == wanted:
                break
        return seen


@SLOW_TO_BUILD
async def test_build_logs_stream_live_while_the_build_runs(
    platform: Platform,
) -> None:
    # The step prints a line, then waits for the test to open a gate: the build is still
    # running when the first line must have reached the reader. The gate is a port that
    # starts to listen (the step's sandbox sees none of the test's files, but the network).
    gate = socket.socket()
    gate.bind(("127.0.0.1", 0))
    port = gate.getsockname()[1]
    step = (
        "python -c \"import socket, time; print('waiting for the gate', flush=True); "
        f"any(not socket.socket().connect_ex(('127.0.0.1', {port})) or time.sleep(0.1) "
        "for _ in range(3000)); print('through the gate')\""
    )
    files = greeter(**{"modelcloud.yml": json.dumps({"build_steps": [step]})})
    await request_build(platform, "1.0", files)
    # Builds run one at a time: this one waits behind the gated one, and is followed from
    # before it starts.
    await request_build(platform, "1.1", files)

    async def listed(version: str) -> str:
        async def one() -> str | None:
            builds = await platform.builds(version)
            return str(builds[0]["id"]) if builds else None

        found: str = await wait_for(one)
        return found

    with gate:
        running, queued = await listed("1.0"), await listed("1.1")
        logs = "/v1/projects/vision/builds/{}/logs"
        async with (
            serving(platform.builder_app) as url,
            httpx.AsyncClient(
                base_url=url,
                headers={"Authorization": platform.builder.headers["Authorization"]},
                timeout=httpx.Timeout(60, read=300),
            ) as client,
            client.stream("GET", logs.format(running), params={"follow": "true"}) as first,
            client.stream("GET", logs.format(queued), params={"follow": "true"}) as second,
        ):
            live, behind = EventStream(first), EventStream(second)
            before_gate = await live.until("waiting for the gate")
            assert before_gate[-1] == "waiting for the gate", before_gate
            states = {b["id"]: b["state"] for b in await platform.builds(None)}
            assert (states[running], states[queued]) == ("running", "queued")
            gate.listen()
            after_gate = await live.until("build succeeded")
            assert after_gate[0] == "through the gate"
            assert after_gate[-1] == "build succeeded"
            assert await live.next_line() is None
            assert live.end == "succeeded"
            followed = await behind.until("build succeeded")
            assert "dependencies unchanged" in "\n".join(followed)
            assert followed[-1] == "build succeeded"
            assert await behind.next_line() is None
            assert behind.end == "succeeded"


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for pid in all_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and process_alive(pid):
            found.append(pid)
    return found


@SLOW_TO_BUILD
@pytest.mark.parametrize(("exit_code", "state"), [(4, "build_failed"), (0, "built")])
async def test_a_step_leaves_none_of_its_processes_running(
    platform: Platform, exit_code: int, state: str
) -> None:
    marker = f"leftover-{uuid.uuid4().hex}"
    # Three children outlive the step: one keeps its output open, one writes nowhere, one
    # left the step's session (setsid), as a daemon does.
    step = (
        'python -c "import subprocess as s, sys; '
        f"c = [sys.executable, '-c', 'import time; time.sleep(300)', '{marker}']; "
        "q = dict(stdout=s.DEVNULL, stderr=s.DEVNULL); "
        "kids = [s.Popen(c), s.Popen(c, **q), s.Popen(c, start_new_session=True, **q)]; "
        "print('children', *[k.pid for k in kids], flush=True); "
        f'sys.exit({exit_code})"'
    )
    files = greeter(**{"modelcloud.yml": json.dumps({"build_steps": [step]})})
    finished = await build(platform, "1.0", files)
    assert finished["state"] == state, finished["state_detail"]
    (record,) = await platform.builds("1.0")
    log = await log_of(platform, record["id"])
    assert re.search(r"^children \d+ \d+ \d+$", log, re.MULTILINE), log  # they did start
    assert not processes_with(marker)


def test_image_cleanup_without_a_docker_engine_does_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")
    remove_test_images()  # the venv tests' teardown, on a machine without dockerd


@SLOW_TO_BUILD
@pytest.mark.parametrize(
    ("extra", "step", "shown"),
    [
        (
            {"modelcloud.yml": f"build_steps:\n  - {FAILING_STEP}\n"},
            FAILING_STEP,
            ["exit code 3", "boom"],
        ),
        (
            {"requirements.txt": "modelcloud-no-such-package-4242==1.0\n"},
            "pip install -r requirements.txt",
            ["modelcloud-no-such-package-4242"],
        ),
        (
            {"modelcloud.yml": "entrypoint: python serve.py\n"},
            "entrypoint",
            ["serve.py is not in the bundle"],
        ),
        (
            {"modelcloud.yml": "python: '3.9'\n"},
            "python 3.9",
            ["3.11"],
        ),
        (
            {"modelcloud.yml": "build_steps:\n  - pip install x && rm -rf /\n"},
            "modelcloud.yml",
            ["shell operators"],
        ),
    ],
    ids=["failing step", "missing requirement", "missing entrypoint", "missing python", "shell"],
)
async def test_a_failed_build_names_its_step_and_shows_its_output(
    platform: Platform, extra: dict[str, str], step: str, shown: list[str]
) -> None:
    failed = await build(platform, "1.0", greeter(**extra))
    assert failed["state"] == "build_failed"
    assert repr(step) in failed["state_detail"]
    (record,) = await platform.builds("1.0")
    assert record["state"] == "failed"
    assert record["failed_step"] == step
    for text in shown:
        assert text in record["reason"]
        assert text in await log_of(platform, record["id"])


async def test_builds_need_a_token_and_another_project_sees_nothing(platform: Platform) -> None:
    anonymous = await platform.builder.get(
        "/v1/projects/vision/builds", headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    token = await platform.registry.user_token("mallory")
    foreign = await platform.builder.get(
        "/v1/projects/vision/builds", headers={"Authorization": f"Bearer {token}"}
    )
    assert foreign.status_code == 404
