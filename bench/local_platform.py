"""The embedded platform for the benchmarks: ``modelcloud up`` on a fresh data folder, with
none of the caller's ModelCloud settings leaking in."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
_PREFIXES = ("MODELCLOUD_", "REGISTRY_", "GATEWAY_", "BUILDER_", "FILESTORE_", "METRICS_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(home: Path, **settings: str) -> dict[str, str]:
    """This process's environment without ModelCloud settings, ``HOME`` at ``home``."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(_PREFIXES)}
    return kept | {"HOME": str(home)} | settings


@contextlib.contextmanager
def embedded(work: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """The gateway's URL and the admin token, while the platform runs; stopped after."""
    port = free_port()
    platform = subprocess.Popen(
        [str(BIN / "modelcloud"), "up", "--data-dir", str(work / "platform"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if platform.poll() is not None:
                raise SystemExit(f"modelcloud up exited with {platform.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{gateway}/healthz").status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise SystemExit("modelcloud up did not start within a minute")
        yield gateway, (work / "platform" / "admin.token").read_text().strip()
    finally:
        platform.send_signal(signal.SIGINT)
        platform.wait(timeout=60)
