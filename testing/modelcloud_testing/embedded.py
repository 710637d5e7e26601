"""The embedded platform (``modelcloud up``) as a user starts it, in its own process, with
its own home folder and ports; and a greeter folder to deploy to it."""

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelcloud_testing.platforms import GREETER
from modelcloud_testing.polling import wait_until
from modelcloud_testing.workers import worker_index

CLI = str(Path(sys.executable).with_name("modelcloud"))


def free_port_block() -> int:
    """The first of 5 free ports in a row. Each test process of a parallel run searches its
    own blocks (interleaved), so two never pick the same block before either binds it."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    for base in range(18_100 + 10 * worker_index(), 30_000, 10 * count):
        try:
            for port in range(base, base + 5):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no 5 free ports in a row")


class Embedded:
    def __init__(self, home: Path, port: int, build_cache: Path | None = None) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MODELCLOUD_", "REGISTRY_"))
        } | {"HOME": str(home)}
        if build_cache is not None:
            # The test process's builder cache: its SDK wheels and environments are reused.
            self.env["BUILDER_CACHE_DIR"] = str(build_cache)
        self.process: subprocess.Popen[bytes] | None = None

    def up(self) -> None:
        process = self.process = subprocess.Popen(
            [CLI, "up", "--data-dir", str(self.home / "platform"), "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"modelcloud up exited with {process.returncode}")
            try:
                return httpx.get(f"{self.url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60, what="modelcloud up")

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
def embedded(tmp_path: Path, build_cache: Path) -> Iterator[Embedded]:
    platform = Embedded(tmp_path, free_port_block(), build_cache)
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
