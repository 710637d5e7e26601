"""Builder fixtures: a real registry and a builder sharing one local bus, in-process; the
venv backend builds real environments (their pip cache and built environments are shared
by every test of the session, as a long-lived builder would share them)."""

import asyncio
import contextlib
import gc
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.builder.main import create_app
from services.builder.settings import BuilderSettings
from services.common.events.local import LocalBus
from services.registry.settings import RegistrySettings
from services.registry.tests.support import Registry, make_service, running_registry

SERVICE = "/v1/projects/vision/services/greeter"

GREETER = """
import os
import modelcloud
from modelcloud.data_types import text


@modelcloud.setup
def setup():
    if os.path.exists("fail_setup"):
        raise RuntimeError("the weights file is corrupt")
    return {"greeting": open("greeting.txt").read().strip()}


@modelcloud.command("greet", inputs={"name": text()}, outputs={"message": text()})
def greet(model, inputs):
    return {"message": f"{model['greeting']}, {inputs['name']}"}


if __name__ == "__main__":
    modelcloud.run()
"""


def greeter(greeting: str = "hello", **extra: str) -> dict[str, str]:
    """A tiny model bundle: no torch, a build in seconds once its environment exists."""
    return {"cloud_model.py": GREETER, "greeting.txt": greeting, **extra}


@dataclass
class Platform:
    registry: Registry
    builder_app: FastAPI
    builder: httpx.AsyncClient
    settings: BuilderSettings

    async def version(self, version: str) -> dict[str, Any]:
        answer = await self.registry.client.get(f"{SERVICE}/versions/{version}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def wait_state(self, version: str, *states: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = await self.version(version)
            if found["state"] in states:
                return found
            await asyncio.sleep(0.2)
        raise AssertionError(f"version {version} still {found['state']}, wanted {states}")

    async def builds(self, version: str | None) -> list[dict[str, Any]]:
        """The service's builds, of one version or of all."""
        params = {"service": "greeter"} | ({"version": version} if version else {})
        answer = await self.builder.get("/v1/projects/vision/builds", params=params)
        assert answer.status_code == 200, answer.text
        body: list[dict[str, Any]] = answer.json()
        return body

    async def deployments(self) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = (
            await self.builder.get("/v1/projects/vision/deployments")
        ).json()
        return body


async def wait_for(check: Any, timeout: float = 60) -> Any:
    """The first true value ``check()`` returns, polling; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("builder-cache")


@contextlib.asynccontextmanager
async def running_builder(
    settings: BuilderSettings, registry: Registry
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(
        settings, bus=registry.bus, registry_transport=httpx.ASGITransport(app=registry.app)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://builder",
            headers={"Authorization": f"Bearer {registry.admin_token}"},
        ) as client,
    ):
        yield app, client


@pytest.fixture
def builder_settings(tmp_path: Path, build_cache: Path) -> Callable[..., BuilderSettings]:
    def make(**extra: Any) -> BuilderSettings:
        defaults: dict[str, Any] = {
            "data_dir": tmp_path / "builder",
            "cache_dir": build_cache,
            "health_timeout_s": 120,
            "health_interval_s": 0.3,
            "restart_backoff_max_s": 2,
            "stop_replicas_on_exit": True,
        }
        return BuilderSettings(**(defaults | extra))

    return make


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry on a local bus, with project ``vision`` and service ``greeter`` (cpu)."""
    bus = LocalBus(tmp_path / "events.db")
    await bus.start()
    try:
        async with running_registry(RegistrySettings(data_dir=tmp_path / "registry"), bus) as reg:
            await make_service(reg.client, service="greeter", performance={"device": "cpu"})
            yield reg
    finally:
        await bus.close()


@pytest.fixture
async def platform(
    registry: Registry, builder_settings: Callable[..., BuilderSettings]
) -> AsyncIterator[Platform]:
    settings = builder_settings(registry_token=registry.admin_token)
    async with running_builder(settings, registry) as (app, client):
        yield Platform(registry, app, client, settings)
    _remove_test_images()


BASE_IMAGE = "modelcloud/debian-python:3.11"
INDEX_URL = "https://pypi.org/simple/"


def _remove_test_images() -> None:
    """The test's images (one repository per version id), so a test run leaves no gigabytes;
    nothing to do where no Docker engine answers (venv tests on a machine without one)."""
    import docker

    with warnings.catch_warnings():
        # docker-py leaves the socket of a failed connection open: let it go quietly.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env()
        except docker.errors.DockerException:
            client = None
        if client is None:
            gc.collect()
            return
    try:
        for image in client.images.list(name="modelcloud/*"):
            for tag in image.tags:
                if tag.split(":", 1)[0] != BASE_IMAGE.split(":", 1)[0]:
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(tag)
    finally:
        client.close()


REPOSITORY = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def docker_base_image() -> str:
    """The Debian + Python 3.11 base image, built from Debian's packages when missing (no
    container registry is reachable here)."""
    import subprocess

    import docker

    client = docker.from_env()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([REPOSITORY / "deploy" / "base-image.sh", BASE_IMAGE], check=True)
    finally:
        client.close()
    return BASE_IMAGE


@pytest.fixture
async def docker_platform(
    registry: Registry, builder_settings: Callable[..., BuilderSettings], docker_base_image: str
) -> AsyncIterator[Platform]:
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    settings = builder_settings(
        registry_token=registry.admin_token,
        backend="docker",
        docker_base_images={"3.11": docker_base_image},
        ca_bundle=str(host_ca) if host_ca.is_file() else None,
        # The real index, spelled so that pip names it in the log ("Looking in indexes"):
        # builds must reach it, and replicas must not see it.
        index_url=INDEX_URL,
        trusted_hosts=["pypi.org"],
        # Where this machine keeps its CPU torch wheel (pip's own setting here).
        find_links=[p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p],
    )
    async with running_builder(settings, registry) as (app, client):
        yield Platform(registry, app, client, settings)
    _remove_test_images()
