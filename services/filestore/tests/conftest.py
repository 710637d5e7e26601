"""File store fixtures: a real registry (for tokens and roles) and a file store that asks it,
both in-process; blobs in a local folder, or in S3 served by moto on loopback."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from modelcloud_testing.registries import Registry, make_service, running_registry
from services.common.events.local import LocalBus
from services.filestore.main import create_app
from services.filestore.settings import FilestoreSettings
from services.registry.settings import RegistrySettings


@dataclass
class Stack:
    registry: Registry
    files: httpx.AsyncClient
    settings: FilestoreSettings


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback (no MinIO binary can be installed here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=30)


async def _stack(tmp_path: Path, **settings: object) -> AsyncIterator[Stack]:
    bus = LocalBus(tmp_path / "events.db")
    await bus.start()
    registry_settings = RegistrySettings(data_dir=tmp_path / "registry")
    try:
        async with running_registry(registry_settings, bus) as registry:
            await make_service(registry.client)  # project "vision"
            file_settings = FilestoreSettings(data_dir=tmp_path / "filestore", **settings)  # type: ignore[arg-type]
            app = create_app(
                file_settings, registry_transport=httpx.ASGITransport(app=registry.app)
            )
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://filestore",
                    headers={"Authorization": f"Bearer {registry.admin_token}"},
                ) as client,
            ):
                yield Stack(registry, client, file_settings)
    finally:
        await bus.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for value in _stack(tmp_path):
        yield value


def s3_settings(tmp_path: Path, endpoint: str) -> dict[str, object]:
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    return {
        "storage": "s3",
        "s3_endpoint_url": endpoint,
        "s3_bucket": f"bucket-{tmp_path.name.lower()[-20:].replace('_', '-')}",
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",  # moto accepts any credentials
    }


@pytest.fixture
async def s3_stack(tmp_path: Path, s3_endpoint: str) -> AsyncIterator[Stack]:
    """S3, direct uploads in parts of the smallest size S3 takes (5 MiB)."""
    settings = s3_settings(tmp_path, s3_endpoint)
    async for value in _stack(tmp_path, part_size=5 << 20, **settings):
        yield value


def bucket_client(stack: Stack) -> Any:
    """A plain boto3 client on the stack's bucket, to look behind the file store's back."""
    return boto3.client(
        "s3",
        endpoint_url=stack.settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - moto accepts any credentials
    )
