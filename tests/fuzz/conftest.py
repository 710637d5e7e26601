"""The platform the fuzzer talks to: ``modelcloud up`` in a child process on loopback (its
own interpreter, so the fuzzer and the five services do not share one GIL), an admin token,
and one real project, group, service, version, run and file, so that generated path
parameters name real objects some of the time."""

import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CLI = str(Path(sys.executable).with_name("modelcloud"))
SERVICES = ("gateway", "registry", "builder", "filestore", "metrics")  # port, port + 1, ...
GREETER = """
import modelcloud
from modelcloud.data_types import text


@modelcloud.command("greet", inputs={"name": text()}, outputs={"message": text()})
def greet(model, inputs):
    return {"message": "hello, " + inputs["name"]}


if __name__ == "__main__":
    modelcloud.run()
"""


@dataclass(frozen=True)
class FuzzPlatform:
    urls: dict[str, str]  # service name -> base URL
    token: str  # the admin's
    real: dict[str, str]  # path parameter name -> a value naming a real object

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _free_port_block(size: int = 5) -> int:
    # Each pytest-xdist worker searches its own range: two workers testing the same ports
    # at once would both find them free.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    start = 19_100 + 100 * (worker % 9)
    for base in range(start, start + 100, 10):
        try:
            for port in range(base, base + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {size} free ports in a row")


def _bundle() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        data = GREETER.encode()
        info = tarfile.TarInfo("cloud_model.py")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _created(answer: httpx.Response) -> httpx.Response:
    assert answer.status_code in (200, 201), answer.text
    return answer


def _make_objects(client: httpx.Client) -> dict[str, str]:
    _created(client.post("/v1/projects", json={"name": "fuzz", "type": "cv"}))
    _created(client.post("/v1/projects/fuzz/groups", json={"name": "default"}))
    _created(client.post("/v1/projects/fuzz/services", json={"name": "echo", "group": "default"}))
    _created(
        client.post(
            "/v1/projects/fuzz/services/echo/versions",
            data={"version": "1.0"},
            files={"bundle": ("code.tar.gz", _bundle())},
        )
    )
    run = _created(client.post("/v1/projects/fuzz/runs", json={"experiment": "e", "name": "r"}))
    _created(
        client.put(
            "/v1/projects/fuzz/models/echo/versions/1.0/files/weights.bin",
            content=b"weights",
        )
    )
    return {
        "project": "fuzz",
        "name": "echo",  # a service's, in /services/{name}
        "service": "echo",
        "model": "echo",
        "version": "1.0",
        "run_id": str(run.json()["id"]),
        "path": "weights.bin",
        "member": "admin",
    }


@pytest.fixture(scope="session")
def fuzz_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzPlatform]:
    home = tmp_path_factory.mktemp("fuzz-home")
    port = _free_port_block()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MODELCLOUD_", "REGISTRY_"))
    } | {"HOME": str(home)}
    data = home / "platform"
    with (home / "platform.log").open("wb") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            [CLI, "up", "--data-dir", str(data), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    urls = {name: f"http://127.0.0.1:{port + i}" for i, name in enumerate(SERVICES)}
    try:
        deadline = time.monotonic() + 120
        while True:  # the gateway starts last: once it answers, every service does
            assert process.poll() is None, (home / "platform.log").read_text()[-4000:]
            try:
                if httpx.get(f"{urls['gateway']}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "modelcloud up did not start in 120 s"
            time.sleep(0.1)  # a child process: nothing to await but its port
        token = (data / "admin.token").read_text().strip()
        with httpx.Client(
            base_url=urls["gateway"], headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            real = _make_objects(client)
        yield FuzzPlatform(urls, token, real)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
