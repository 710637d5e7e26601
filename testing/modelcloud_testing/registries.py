"""A registry running in-process with its admin token, and the bundles tests upload to it."""

import io
import tarfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from services.common.events.bus import EventBus
from services.registry.admin import create_admin_user
from services.registry.main import create_app
from services.registry.settings import RegistrySettings

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE = REPOSITORY / "examples" / "imagenet-classifier"


@dataclass
class Registry:
    app: FastAPI
    client: httpx.AsyncClient
    admin_token: str
    settings: RegistrySettings
    bus: EventBus

    def as_user(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def user_token(self, name: str) -> str:
        created = await self.client.post("/v1/users", json={"name": name})
        assert created.status_code == 201, created.text
        issued = await self.client.post(f"/v1/users/{name}/tokens", json={"name": "test"})
        return str(issued.json()["token"])


@asynccontextmanager
async def running_registry(settings: RegistrySettings, bus: EventBus) -> AsyncIterator[Registry]:
    # A fresh admin each time: a restarted registry on the same database keeps the old one.
    token = await create_admin_user(settings, f"admin-{uuid.uuid4().hex[:6]}")
    app = create_app(settings, bus=bus)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://registry",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield Registry(app, client, token, settings, bus)


def tar_bundle(files: dict[str, bytes | str], *, gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tf:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def example_bundle() -> bytes:
    """The real example folder, packed the way an author uploads it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for path in sorted(EXAMPLE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                tf.add(path, arcname=path.relative_to(EXAMPLE).as_posix())
    return buffer.getvalue()


async def make_service(
    client: httpx.AsyncClient, project: str = "vision", service: str = "classifier", **extra: Any
) -> dict[str, Any]:
    if (await client.get(f"/v1/projects/{project}")).status_code == 404:
        created = await client.post("/v1/projects", json={"name": project, "type": "cv"})
        assert created.status_code == 201, created.text
        group = await client.post(f"/v1/projects/{project}/groups", json={"name": "default"})
        assert group.status_code == 201, group.text
    response = await client.post(
        f"/v1/projects/{project}/services", json={"name": service, "group": "default", **extra}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def upload_version(
    client: httpx.AsyncClient,
    version: str = "1.0",
    bundle: bytes | None = None,
    project: str = "vision",
    service: str = "classifier",
) -> httpx.Response:
    return await client.post(
        f"/v1/projects/{project}/services/{service}/versions",
        data={"version": version},
        files={"bundle": ("code.tar.gz", example_bundle() if bundle is None else bundle)},
    )
