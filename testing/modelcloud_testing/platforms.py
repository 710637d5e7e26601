"""A real registry and builder sharing one local bus, in-process: the builder's and the
gateway's tests run on it. The venv backend builds real environments; their pip cache, SDK
wheels and built environments are shared by every test of a test process, as a long-lived
builder would share them."""

import asyncio
import contextlib
import fcntl
import gc
import os
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelcloud_testing.polling import INTERVAL_S
from modelcloud_testing.registries import REPOSITORY, Registry, make_service, running_registry
from modelcloud_testing.sdk_wheels import SdkWheelhouse
from modelcloud_testing.workers import shared_temporary_root
from services.builder.main import create_app
from services.builder.settings import BuilderSettings
from services.common.events.local import LocalBus
from services.registry.settings import RegistrySettings

SERVICE = "/v1/projects/vision/services/greeter"
BASE_IMAGE = "modelcloud/debian-python:3.11"
INDEX_URL = "https://pypi.org/simple/"

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
        while True:
            found = await self.version(version)
            if found["state"] in states:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"version {version} still {found['state']}, wanted {states}")
            await asyncio.sleep(INTERVAL_S)

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


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory, sdk_wheelhouse: SdkWheelhouse) -> Path:
    """The builder cache of this test process, its SDK wheels already built."""
    cache = tmp_path_factory.mktemp("builder-cache")
    sdk_wheelhouse.install_into(cache / "wheelhouse")
    return cache


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
    """A registry on a local bus, with project ``vision`` and service ``greeter`` (cpu); the
    registry's own tests replace it with a bare one."""
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
    """The venv backend (it makes no image: nothing to remove after it)."""
    settings = builder_settings(registry_token=registry.admin_token)
    async with running_builder(settings, registry) as (app, client):
        yield Platform(registry, app, client, settings)


def remove_test_images(repository: str = "modelcloud") -> None:
    """The images of a test's builder (``BUILDER_DOCKER_IMAGE_REPOSITORY``; one repository
    per version id under it), so a test run leaves no gigabytes; nothing to do where no
    Docker engine answers (venv tests on a machine without one). Every image under
    ``repository`` but the base goes: the tests building into one repository share one test
    process (an xdist group, ``workers.py``), so none is another process's image in use."""
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
        for image in client.images.list(name=f"{repository}/*"):
            for tag in image.tags:
                if tag.split(":", 1)[0] != BASE_IMAGE.split(":", 1)[0]:
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(tag)
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Debian + Python 3.11 base image, built from Debian's packages when missing (no
    container registry is reachable here)."""
    import docker

    # Two test processes may both find it missing on a fresh machine: one builds it.
    lock = shared_temporary_root(tmp_path_factory) / "docker-base-image.lock"
    client = docker.from_env()
    try:
        with lock.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
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
    remove_test_images()
