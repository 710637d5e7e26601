"""``modelcloud serve registry`` alone on SQLite with no other setup, and the first admin
created by a command."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CLI = str(Path(sys.executable).with_name("modelcloud"))


def wait_until_ready(
    server: subprocess.Popen[bytes], url: str, log: Path, *, timeout_s: float
) -> None:
    """Poll ``/readyz`` until it answers 200; fail with the server's output if the server
    exits or is still not ready after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the registry exited with {server.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    pytest.fail(f"the registry was not ready after {timeout_s}s ({last}):\n{log.read_text()}")


def test_serve_registry_on_sqlite_with_a_command_made_admin(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    made = subprocess.run(
        [CLI, "registry", "create-admin", "root", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    token = made.stdout.strip()
    assert token.startswith("mc_")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "registry.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [CLI, "serve", "registry", "--port", str(port), "--data-dir", str(tmp_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(server, url, log, timeout_s=60)
        anonymous = httpx.get(f"{url}/v1/projects")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{url}/v1/projects", json={"name": "demo"}, headers=headers)
        assert created.status_code == 201, created.text
        assert httpx.get(f"{url}/v1/me", headers=headers).json()["name"] == "root"
    finally:
        server.terminate()
        server.wait(timeout=30)
    logged = log.read_text()
    assert token not in logged  # tokens never reach the logs
    assert '"path": "/v1/projects"' in logged
    assert (tmp_path / "registry.db").exists()
