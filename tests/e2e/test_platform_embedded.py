"""The whole journey on the embedded platform, as a user types it: ``modelcloud up``, then
``modelcloud deploy`` of a folder, calls through the gateway by service name and by
versioned URL, a second version beside the first, the first taken offline, and a restart of
the platform that brings back what was online."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.builder.tests.conftest import GREETER

pytestmark = pytest.mark.timeout(600)
CLI = str(Path(sys.executable).with_name("modelcloud"))


def free_port_block() -> int:
    import socket

    for base in range(18_100, 19_000, 10):
        try:
            for port in range(base, base + 4):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no 4 free ports in a row")


class Embedded:
    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MODELCLOUD_", "REGISTRY_"))
        } | {"HOME": str(home)}
        self.process: subprocess.Popen[bytes] | None = None

    def up(self) -> None:
        self.process = subprocess.Popen(
            [CLI, "up", "--data-dir", str(self.home / "platform"), "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            if self.process.poll() is not None:
                raise RuntimeError(f"modelcloud up exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("modelcloud up did not start")

    def down(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(timeout=60) == 0

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [CLI, *args], env=self.env, capture_output=True, text=True, timeout=600, check=False
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    platform = Embedded(tmp_path, free_port_block())
    platform.up()
    try:
        yield platform
    finally:
        if platform.process is not None and platform.process.poll() is None:
            platform.down()


def greeter_folder(root: Path, greeting: str) -> Path:
    folder = root / f"greeter-{greeting}"
    folder.mkdir()
    (folder / "cloud_model.py").write_text(GREETER)
    (folder / "greeting.txt").write_text(greeting)
    (folder / "modelcloud.yml").write_text(
        "service:\n  name: greeter\n  tagline: Says hello.\n  performance:\n    device: cpu\n"
    )
    return folder


def test_up_deploy_call_offline_and_restart(embedded: Embedded, tmp_path: Path) -> None:
    config = json.loads((tmp_path / ".modelcloud" / "config.json").read_text())
    assert config["url"] == embedded.url

    first = json.loads(
        embedded.cli(
            "deploy", str(greeter_folder(tmp_path, "hello")), "--project", "vision", "--json"
        ).stdout
    )
    assert first == {
        "project": "vision",
        "service": "greeter",
        "version": "1.0",
        "api_version": 1,
        "url": f"{embedded.url}/models/vision/greeter/v1",
    }
    called = embedded.cli("call", "vision/greeter", "greet", "name=ada")
    assert json.loads(called.stdout) == {"message": "hello, ada"}

    second = json.loads(
        embedded.cli(
            "deploy", str(greeter_folder(tmp_path, "bonjour")), "--project", "vision", "--json"
        ).stdout
    )
    assert (second["version"], second["api_version"]) == ("2.0", 2)
    v1 = embedded.cli("call", "vision/greeter/v1", "greet", "name=ada")
    v2 = embedded.cli("call", second["url"], "greet", "name=ada")  # the URL deploy printed
    assert json.loads(v1.stdout) == {"message": "hello, ada"}
    assert json.loads(v2.stdout) == {"message": "bonjour, ada"}
    anonymous = httpx.post(f"{second['url']}/greet", json={"name": "ada"})
    assert anonymous.status_code == 401

    status = json.loads(embedded.cli("status", "--json").stdout)
    assert [(r["version"], r["state"]) for r in status] == [("1.0", "online"), ("2.0", "online")]
    embedded.cli("offline", "vision/greeter@1.0")
    for _ in range(100):
        gone = embedded.cli("call", "vision/greeter/v1", "greet", "name=ada", ok=False)
        if gone.returncode == 1 and "not online" in gone.stderr:
            break
        time.sleep(0.3)
    assert "v1 of vision/greeter is not online (online: v2)" in gone.stderr

    embedded.down()
    embedded.up()  # the replica of 2.0 comes back, on its port
    for _ in range(150):
        again = embedded.cli("call", "vision/greeter", "greet", "name=grace", ok=False)
        if again.returncode == 0:
            break
        time.sleep(0.3)
    assert json.loads(again.stdout) == {"message": "bonjour, grace"}
