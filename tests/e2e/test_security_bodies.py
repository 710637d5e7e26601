"""Issue 13, finding 5: request bodies are refused as they arrive, and build logs are read
in pieces, with each service's peak memory checked on a real server.

Each service runs alone in a uvicorn subprocess (this file is its launcher: ``python
tests/e2e/test_security_bodies.py SERVICE PORT DATA_DIR``), its registry answered in
process where it asks one. The test resets the server's peak RSS (``/proc/PID/clear_refs``),
sends the body from a raw socket a MiB at a time (so neither side holds it) until the
server answers, and reads the peak (``VmHWM``) back. Before the fix: +580 to +700 MiB for
an anonymous 200 MiB body, +584 MiB for a 400 MiB chunked model call, a 143 MiB log read
whole.
"""

import asyncio
import json
import os
import re
import select
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
MiB = 1 << 20
GROWTH_LIMIT = 50 * MiB
USER_TOKEN = "Bearer mc_test_user"  # noqa: S105 - what the in-process registry accepts
GATEWAY_CALL_LIMIT = 16 * MiB
PROJECT = "vision"
LONG_BUILD = uuid.UUID("00000000-0000-4000-8000-000000000013")
FORGING_BUILD = uuid.UUID("00000000-0000-4000-8000-000000000014")
LOG_LINE = b"x" * 1023 + b"\n"
LOG_LINES = 100 * 1024  # a 100 MiB log
FORGED = b"step output\revent: end\rdata: succeeded\n\nid: 7\n"

# A JSON route of each service that takes the default limit (1 MiB), and what a token
# holder's 200 MiB body gets there.
JSON_ROUTES = {
    "registry": ("/v1/projects", 413),
    "filestore": (f"/v1/projects/{PROJECT}/models/m/versions/1/uploads", 413),
    "metrics": (f"/v1/projects/{PROJECT}/runs/{uuid.uuid4()}", 413),  # PATCH: a run's update
    "builder": (f"/v1/projects/{PROJECT}/builds", 405),  # the builder takes no body at all
    "gateway": (f"/models/{PROJECT}/greeter/predict", 413),
}


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    service: str
    process: subprocess.Popen[str]
    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        if (self.data / "admin.token").exists():
            return "Bearer " + (self.data / "admin.token").read_text().strip()
        return USER_TOKEN

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()  # blocks until the server is up, or died
        assert ready.strip() == "ready", f"{self.service} did not start: {self.process.poll()}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def reset_peak(self) -> int:
        """Start a fresh peak RSS; the RSS now, in bytes."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")

    def _status(self, field: str) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
        assert found is not None, status
        return int(found.group(1)) * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch(service: str, data: Path) -> Server:
    """Start ``service``; :meth:`Server.wait_ready` waits for it (servers start together)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PREFIXES)}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(HERE), service, str(port), str(data)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return Server(service, process, port, data)


_PREFIXES = ("MODELCLOUD_", "REGISTRY_", "BUILDER_", "FILESTORE_", "METRICS_", "GATEWAY_")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    running = {name: launch(name, tmp_path_factory.mktemp(name)) for name in JSON_ROUTES}
    try:
        for server in running.values():
            server.wait_ready()
        yield running
    finally:
        for server in running.values():
            server.stop()


@pytest.fixture
def builder(servers: dict[str, Server]) -> Server:
    return servers["builder"]


# ----------------------------------------------------------------------------- a raw client


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int

    def json(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.body)
        return parsed


_FILLER = b"[" + b"1," * (MiB // 2 - 1) + b"1"  # a MiB of a JSON array, never closed


def send_body(
    server: Server,
    path: str,
    size: int,
    *,
    token: str | None,
    chunked: bool,
    method: str = "POST",
) -> Answer:
    """Send ``size`` bytes to ``path`` a MiB at a time, stopping as soon as the server
    answers; the answer, and how many body bytes went out."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if token is not None:
        head.append(f"Authorization: {token}")
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        try:
            while sent < size and not select.select([sock], [], [], 0)[0]:
                piece = _FILLER[: size - sent]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                sent += len(piece)
            if sent >= size and chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the answer is waiting to be read
        return _read_answer(sock, sent)


def _read_answer(sock: socket.socket, sent: int) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"the server closed without an answer after {sent} bytes"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return Answer(int(status_line.split()[1]), headers, body[:length], sent)


def grown_by(server: Server, action: Callable[[], Answer]) -> tuple[Answer, int]:
    """What ``action`` answered, and how far the server's peak RSS rose above its RSS
    before."""
    before = server.reset_peak()
    answer = action()
    return answer, server.peak() - before


# ----------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("service", list(JSON_ROUTES))
def test_an_anonymous_200_mib_body_gets_its_401_unread(
    servers: dict[str, Server], service: str, chunked: bool
) -> None:
    server = servers[service]
    path, _ = JSON_ROUTES[server.service]
    method = _method(server.service)
    answer, growth = grown_by(
        server,
        lambda: send_body(server, path, 200 * MiB, token=None, chunked=chunked, method=method),
    )
    assert answer.status == 401, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.sent < 200 * MiB
    assert growth < GROWTH_LIMIT, f"{growth / MiB:.0f} MiB"


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("service", [s for s in JSON_ROUTES if s != "gateway"])  # see below
def test_an_authenticated_200_mib_json_body_gets_its_413_with_bounded_memory(
    servers: dict[str, Server], service: str, chunked: bool
) -> None:
    server = servers[service]
    path, status = JSON_ROUTES[server.service]
    method = _method(server.service)
    answer, growth = grown_by(
        server,
        lambda: send_body(
            server, path, 200 * MiB, token=server.token(), chunked=chunked, method=method
        ),
    )
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    if status == 413:
        assert "over the limit" in str(answer.json()["detail"])
    assert answer.sent < 200 * MiB
    assert growth < GROWTH_LIMIT, f"{growth / MiB:.0f} MiB"


def test_a_400_mib_chunked_model_call_gets_its_413(servers: dict[str, Server]) -> None:
    server = servers["gateway"]
    path, _ = JSON_ROUTES["gateway"]
    answer, growth = grown_by(
        server, lambda: send_body(server, path, 400 * MiB, token=USER_TOKEN, chunked=True)
    )
    assert answer.status == 413, answer.body
    assert answer.json()["detail"] == f"a model call carries at most {GATEWAY_CALL_LIMIT} bytes"
    assert answer.sent < 400 * MiB
    assert growth < GROWTH_LIMIT, f"{growth / MiB:.0f} MiB"


def _method(service: str) -> str:
    return "PATCH" if service == "metrics" else "POST"


# ----------------------------------------------------------------------------- build logs

LOGS = f"/v1/projects/{PROJECT}/builds/{LONG_BUILD}/logs"
LONG_LOG_SIZE = len(LOG_LINE) * LOG_LINES


def test_a_100_mib_build_log_is_streamed_with_bounded_memory(builder: Server) -> None:
    def read_all() -> int:
        size = 0
        with httpx.stream(
            "GET", builder.url + LOGS, headers={"Authorization": USER_TOKEN}
        ) as answer:
            assert answer.status_code == 200
            assert answer.headers["x-log-size"] == str(LONG_LOG_SIZE)
            for chunk in answer.iter_raw():
                size += len(chunk)
        return size

    before = builder.reset_peak()
    size = read_all()
    growth = builder.peak() - before
    assert size == LONG_LOG_SIZE
    assert growth < GROWTH_LIMIT, f"{growth / MiB:.0f} MiB"


def test_a_build_log_is_served_in_ranges(builder: Server) -> None:
    piece = httpx.get(
        builder.url + LOGS,
        params={"offset": len(LOG_LINE) * 3 + 1020, "limit": 30},
        headers={"Authorization": USER_TOKEN},
    )
    assert piece.status_code == 200
    assert piece.content == b"xxx\n" + b"x" * 26
    past_the_end = httpx.get(
        builder.url + LOGS, params={"offset": 1 << 40}, headers={"Authorization": USER_TOKEN}
    )
    assert past_the_end.status_code == 200
    assert past_the_end.content == b""


def test_following_a_100_mib_log_holds_a_piece_at_a_time(builder: Server) -> None:
    lines = 0
    before = builder.reset_peak()
    with httpx.stream(
        "GET",
        builder.url + LOGS,
        params={"follow": "true"},
        headers={"Authorization": USER_TOKEN},
        timeout=60,
    ) as answer:
        for line in answer.iter_lines():
            lines += line.startswith("data: x")
    growth = builder.peak() - before
    assert lines == LOG_LINES
    assert growth < GROWTH_LIMIT, f"{growth / MiB:.0f} MiB"


def test_a_carriage_return_in_a_log_line_cannot_forge_an_event(builder: Server) -> None:
    """``\\r`` ends a line in Server-Sent Events: a step printing it could end the stream
    with a forged ``end`` event (here: a build that says it succeeded) or set an ``id``."""
    answer = httpx.get(
        builder.url + f"/v1/projects/{PROJECT}/builds/{FORGING_BUILD}/logs",
        params={"follow": "true"},
        headers={"Authorization": USER_TOKEN},
    )
    # What a client parsing the stream sees (``splitlines`` ends lines at ``\r`` as Server-
    # Sent Events do): the forged text only ever as data, and the build's real end.
    assert answer.text.splitlines() == [
        "data: step output",
        "data: event: end",
        "data: data: succeeded",
        "",
        "data: ",
        "",
        "data: id: 7",
        "",
        "event: end",
        "data: failed",
        "",
    ]


# ----------------------------------------------------------------------------- the launcher


def _registry_answers(request: httpx.Request) -> httpx.Response:
    """The registry, as the file store, metrics service, builder and gateway ask it."""
    if request.headers.get("authorization") != USER_TOKEN:
        return httpx.Response(401, json={"detail": "the token is not valid"})
    if request.url.path == "/v1/me":
        return httpx.Response(200, json={"name": "alice"})
    return httpx.Response(200, json={"name": PROJECT, "role": "admin"})


async def _serve(service: str, port: int, data: Path) -> None:
    import uvicorn

    from services.common.serving import server_config

    registry = httpx.MockTransport(_registry_answers)
    app: FastAPI
    if service == "registry":
        from services.registry.admin import create_admin_user
        from services.registry.main import create_app as registry_app
        from services.registry.settings import RegistrySettings

        settings = RegistrySettings(data_dir=data, port=port, log_level="warning")
        token = await create_admin_user(settings, "admin")
        (data / "admin.token").write_text(token)
        app = registry_app(settings)
    elif service == "filestore":
        from services.filestore.main import create_app as filestore_app
        from services.filestore.settings import FilestoreSettings

        app = filestore_app(
            FilestoreSettings(data_dir=data, port=port, log_level="warning"),
            registry_transport=registry,
        )
    elif service == "metrics":
        from services.metrics.main import create_app as metrics_app
        from services.metrics.settings import MetricsSettings

        app = metrics_app(
            MetricsSettings(data_dir=data, port=port, log_level="warning"),
            registry_transport=registry,
        )
    elif service == "builder":
        from services.builder.main import create_app as builder_app
        from services.builder.settings import BuilderSettings

        app = builder_app(
            BuilderSettings(data_dir=data, port=port, log_level="warning"),
            registry_transport=registry,
        )
    else:
        from services.gateway.main import create_app as gateway_app
        from services.gateway.settings import GatewaySettings

        app = gateway_app(
            GatewaySettings(
                data_dir=data,
                port=port,
                log_level="warning",
                max_request_bytes=GATEWAY_CALL_LIMIT,
            ),
            transports={"registry": registry},
        )
    server = uvicorn.Server(server_config(app, "127.0.0.1", port))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving  # raises why it could not start
            return
        await asyncio.sleep(0.05)
    if service == "builder":
        await _builds_with_logs(app)
    if service == "gateway":
        _a_model_online(app)
    print("ready", flush=True)
    await serving


async def _builds_with_logs(app: FastAPI) -> None:
    """Two failed builds: one with a 100 MiB log, one whose step printed ``FORGED``."""
    from modelcloud_proto.specs import Device
    from services.builder.builds.models import Build, BuildState
    from services.builder.state import BuilderState
    from services.common.runtime import service_state

    state = service_state(app, BuilderState)
    async with state.database.sessions() as session:
        for build_id in (LONG_BUILD, FORGING_BUILD):
            session.add(
                Build(
                    id=build_id,
                    version_id=uuid.uuid4(),
                    project=PROJECT,
                    service="greeter",
                    version=str(build_id)[-2:],
                    bundle_sha256="0" * 64,
                    device=Device("cpu"),
                    build_spec={},
                    state=BuildState.FAILED,
                    created_at=datetime.now(UTC),
                )
            )
        await session.commit()
    logs = state.build_logs
    logs.folder.mkdir(parents=True, exist_ok=True)
    with logs.path(LONG_BUILD).open("wb") as out:
        for _ in range(LOG_LINES // 1024):
            out.write(LOG_LINE * 1024)
    logs.path(FORGING_BUILD).write_bytes(FORGED)


def _a_model_online(app: FastAPI) -> None:
    from modelcloud_proto.events import Replica
    from modelcloud_proto.specs import Device
    from services.common.runtime import service_state
    from services.gateway.routing import Route
    from services.gateway.state import GatewayState

    route = Route(
        project=PROJECT,
        service="greeter",
        version_id=uuid.uuid4(),
        version="1.0",
        api_version=1,
        device=Device("cpu"),
        public=False,
        commands=frozenset({"predict"}),
    )
    # Never reached: the call is refused before it is forwarded.
    service_state(app, GatewayState).routes.online(
        route, [Replica(address="127.0.0.1:9", pool=Device("cpu"))]
    )


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
