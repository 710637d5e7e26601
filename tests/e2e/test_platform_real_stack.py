"""The whole journey on the real stack, every service its own process as in production:
PostgreSQL (a database per service), events over RabbitMQ, the file store on S3 (moto's
server on loopback), the builder's Docker backend. Deploy, call v1, deploy v2, call both side
by side, take v1 offline, then restart the gateway while traffic flows."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelcloud_testing.embedded import greeter_folder
from modelcloud_testing.platforms import remove_test_images
from modelcloud_testing.polling import wait_until
from modelcloud_testing.servers import POSTGRES, RABBITMQ, postgres_databases

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.s3,
    pytest.mark.docker,
    pytest.mark.timeout(900),
]
BIN = Path(sys.executable).parent
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    ports: dict[str, int]
    service_env: dict[str, dict[str, str]]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str) -> None:
        command = [str(BIN / "modelcloud"), "serve", name, "--port", str(self.ports[name])]
        with (self.home / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [*command, "--data-dir", str(self.home / name)],
                env=self.env | self.service_env[name],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = process
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.home / f'{name}.log').read_text()}")
            try:
                if httpx.get(f"{self.url(name)}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready")

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "modelcloud"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def admin_token(env: dict[str, str], name: str, role: str | None = None) -> str:
    """A new admin's token, or with ``role`` a service account's (not an admin)."""
    command = ["create-service-account", name, "--role", role] if role else ["create-admin", name]
    return subprocess.run(
        [str(BIN / "modelcloud"), "registry", *command],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


E2E_IMAGES = "modelcloud-e2e"


@pytest.fixture
def real_stack(tmp_path: Path, docker_base_image: str) -> Iterator[Stack]:
    names = {s: f"mc_e2e_{s}_{uuid.uuid4().hex[:8]}" for s in ("registry", "builder", "files")}
    asyncio.run(postgres_databases("create", list(names.values())))
    server = POSTGRES.split("://", 1)[1]
    database = {s: f"postgresql+asyncpg://{server}/{n}" for s, n in names.items()}
    ports = {s: free_port() for s in ("gateway", "registry", "builder", "filestore", "s3")}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELCLOUD_", "REGISTRY_", "BUILDER_", "FILESTORE_", "GATEWAY_"))
    } | {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    registry_env = {
        "REGISTRY_DATABASE_URL": database["registry"],
        "REGISTRY_BROKER_URL": RABBITMQ,
        "REGISTRY_OUTBOX_POLL_INTERVAL_S": "0.05",
    }
    s3 = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack: Stack | None = None
    try:
        builder_token = admin_token(env | registry_env, "builder", role="builder")
        gateway_token = admin_token(env | registry_env, "gateway", role="gateway")
        token = admin_token(env | registry_env, "admin")
        stack = Stack(
            tmp_path,
            env | {"MODELCLOUD_URL": f"http://127.0.0.1:{ports['gateway']}"},
            ports,
            {
                "registry": registry_env,
                "builder": {
                    "BUILDER_DATABASE_URL": database["builder"],
                    "BUILDER_BROKER_URL": RABBITMQ,
                    "BUILDER_OUTBOX_POLL_INTERVAL_S": "0.05",
                    "BUILDER_REGISTRY_URL": f"http://127.0.0.1:{ports['registry']}",
                    "BUILDER_REGISTRY_TOKEN": builder_token,
                    "BUILDER_BACKEND": "docker",
                    # Its own repository: the Docker tests' clean-up (another test process)
                    # removes modelcloud/*, never these.
                    "BUILDER_DOCKER_IMAGE_REPOSITORY": E2E_IMAGES,
                    "BUILDER_DOCKER_BASE_IMAGES": json.dumps({"3.11": docker_base_image}),
                    "BUILDER_FIND_LINKS": json.dumps(os.environ.get("PIP_FIND_LINKS", "").split()),
                    "BUILDER_HEALTH_INTERVAL_S": "0.3",
                    "BUILDER_STOP_REPLICAS_ON_EXIT": "true",
                    **({"BUILDER_CA_BUNDLE": str(HOST_CA)} if HOST_CA.is_file() else {}),
                },
                "filestore": {
                    "FILESTORE_DATABASE_URL": database["files"],
                    "FILESTORE_REGISTRY_URL": f"http://127.0.0.1:{ports['registry']}",
                    "FILESTORE_STORAGE": "s3",
                    "FILESTORE_S3_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
                    "FILESTORE_S3_ACCESS_KEY_ID": "test",
                    "FILESTORE_S3_SECRET_ACCESS_KEY": "test",
                },
                "gateway": {
                    "GATEWAY_BROKER_URL": RABBITMQ,
                    "GATEWAY_REGISTRY_URL": f"http://127.0.0.1:{ports['registry']}",
                    "GATEWAY_BUILDER_URL": f"http://127.0.0.1:{ports['builder']}",
                    "GATEWAY_FILESTORE_URL": f"http://127.0.0.1:{ports['filestore']}",
                    "GATEWAY_REGISTRY_TOKEN": gateway_token,
                },
            },
        )
        stack.env["MODELCLOUD_TOKEN"] = token
        for name in ("registry", "builder", "filestore", "gateway"):
            stack.start(name)
        yield stack
    finally:
        if stack is not None:
            for name in ("gateway", "filestore", "builder", "registry"):
                if name in stack.processes:
                    stack.stop(name)
        s3.terminate()
        s3.wait(timeout=30)
        asyncio.run(postgres_databases("drop", list(names.values())))
        remove_test_images(E2E_IMAGES)


def test_deploy_versions_offline_and_gateway_restart_on_the_real_stack(
    real_stack: Stack, tmp_path: Path
) -> None:
    stack = real_stack
    gateway = stack.url("gateway")
    headers = {"Authorization": f"Bearer {stack.env['MODELCLOUD_TOKEN']}"}
    deploy = ("deploy", "--project", "vision", "--json")
    first = json.loads(stack.cli(deploy[0], str(greeter_folder(tmp_path, "hello")), *deploy[1:]))
    assert first["url"] == f"{gateway}/models/vision/greeter/v1"
    assert json.loads(stack.cli("call", "vision/greeter", "greet", "name=ada")) == {
        "message": "hello, ada"
    }
    # The registry, the builder and the file store answer through the one front door.
    for route in ("projects/vision", "projects/vision/builds", "projects/vision/models"):
        answer = httpx.get(f"{gateway}/v1/{route}", headers=headers)
        assert answer.status_code == 200, (route, answer.text)
    second = json.loads(stack.cli(deploy[0], str(greeter_folder(tmp_path, "hej")), *deploy[1:]))
    assert second["api_version"] == 2

    def call(url: str, name: str) -> httpx.Response:
        return httpx.post(f"{url}/greet", json={"name": name}, headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:  # both versions at once, each answering as itself
        answers = list(
            pool.map(lambda i: (i % 2, call((first, second)[i % 2]["url"], f"n{i}")), range(16))
        )
    for version, answer in answers:
        assert answer.status_code == 200, answer.text
        greeting = ("hello", "hej")[version]
        assert answer.json()["message"].startswith(f"{greeting}, n")

    stack.cli("offline", "vision/greeter@1.0")
    for _ in range(200):
        gone = call(first["url"], "ada")
        if gone.status_code == 404:
            break
        time.sleep(0.2)
    assert gone.status_code == 404
    assert gone.headers["content-type"].startswith("application/problem+json")
    assert "v1 of vision/greeter is not online (online: v2)" in gone.json()["detail"]

    # Traffic keeps flowing while the gateway restarts: calls fail only while no gateway
    # listens, and the new one routes at once from the registry (no event has to arrive).
    results: list[tuple[float, int | str]] = []
    details: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(headers=headers, timeout=30) as client:
            while not stop.is_set():
                try:
                    answer = client.post(f"{second['url']}/greet", json={"name": "x"})
                    assert answer.status_code != 200 or answer.json() == {"message": "hej, x"}
                    results.append((time.monotonic(), answer.status_code))
                    if answer.status_code != 200:
                        details.append(answer.text)
                except httpx.TransportError as exc:
                    results.append((time.monotonic(), type(exc).__name__))
                time.sleep(0.01)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_until(lambda: len(results) >= 10, what="calls before the restart")
        down = time.monotonic()
        stack.stop("gateway")
        stack.start("gateway")
        ready = time.monotonic()
        wait_until(lambda: len([at for at, _ in results if at > ready]) >= 20, what="calls after")
    finally:
        stop.set()
        worker.join(timeout=60)
    before = [status for at, status in results if at < down]
    after = [status for at, status in results if at > ready]
    gap = [status for at, status in results if down <= at <= ready]
    failed = [status for status in gap if status != 200]
    print(f"gateway restart: {len(failed)} of {len(gap)} calls failed in {ready - down:.2f} s")
    assert before
    assert set(before) == {200}, details
    assert after
    assert set(after) == {200}, after
