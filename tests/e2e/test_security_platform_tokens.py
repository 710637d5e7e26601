"""Issue 13, least privilege for services, on the embedded platform (``modelcloud up``, in
process): the builder and the gateway each hold a service account's token, not an admin's;
the data folder is the platform user's alone (0700) and so are its token files (0600); a data
folder from a version that shared one admin ``platform.token`` is upgraded at start and that
token stops working."""

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelcloud_testing.embedded import free_port_block
from modelcloud_testing.registries import make_service, running_registry, upload_version
from services.builder.bundles import BundleSource
from services.common.events.local import LocalBus
from services.embedded import Platform, run
from services.gateway.routing import RoutingTable
from services.gateway.tables import load_from_registry
from services.registry.admin import create_admin_user
from services.registry.settings import RegistrySettings

pytestmark = pytest.mark.timeout(300)
TOKEN_FILES = ["admin.token", "builder.token", "gateway.token"]


@dataclass
class Running:
    gateway: str
    registry: str
    data: Path

    def token(self, name: str) -> str:
        return (self.data / f"{name}.token").read_text().strip()

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateway, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


@asynccontextmanager
async def platform(data: Path) -> AsyncIterator[Running]:
    port = free_port_block()
    ready = asyncio.Event()
    stop = asyncio.Event()

    def on_ready(_: Platform) -> None:
        ready.set()

    serving = asyncio.create_task(
        run(data, port=port, config_file=None, on_ready=on_ready, stop=stop)
    )
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({serving, waiting}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if serving.done():
        await serving  # raises why it did not start
    assert ready.is_set(), "the platform did not start in 120 s"
    try:
        yield Running(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}", data)
    finally:
        stop.set()
        await serving


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(data: Path) -> None:
    assert mode(data) == 0o700
    assert sorted(p.name for p in data.glob("*.token")) == TOKEN_FILES
    for name in TOKEN_FILES:
        assert mode(data / name) == 0o600, name


async def test_services_hold_service_tokens_that_do_only_their_reads(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    async with platform(data) as up:
        assert_private(data)
        tokens = {name: up.token(name) for name in ("admin", "builder", "gateway")}
        async with up.client(tokens["admin"]) as admin:
            await make_service(admin)  # the admin's project: no service is a member of it
            uploaded = await upload_version(admin)
            assert uploaded.status_code == 201, uploaded.text
        version = uploaded.json()

        # The builder's own client fetches the bundle with its token...
        source = BundleSource(up.registry, tokens["builder"])
        try:
            folder = await source.fetch(
                project="vision",
                service="classifier",
                version="1.0",
                sha256=version["bundle_sha256"],
                into=tmp_path,
            )
        finally:
            await source.close()
        assert (folder / "cloud_model.py").is_file()
        # ...and the gateway's reads what its routing table needs at start.
        table = RoutingTable(max_outstanding=1, eject_s=1)
        async with httpx.AsyncClient(
            base_url=up.registry, headers={"Authorization": f"Bearer {tokens['gateway']}"}
        ) as registry:
            assert await load_from_registry(table, registry) == 0  # nothing online yet
        async with httpx.AsyncClient(
            base_url=up.registry, headers={"Authorization": f"Bearer {tokens['builder']}"}
        ) as registry:
            with pytest.raises(httpx.HTTPStatusError, match="403"):
                await load_from_registry(table, registry)

        for service in ("builder", "gateway"):
            async with up.client(tokens[service]) as client:
                for method, path, body in (
                    ("POST", "/v1/projects", {"name": "mine", "type": "cv"}),
                    ("PUT", "/v1/projects/vision/members/builder", {"role": "admin"}),
                    ("POST", "/v1/tokens", {"name": "more"}),
                    ("POST", "/v1/users", {"name": "eve", "is_admin": True}),
                ):
                    refused = await client.request(method, path, json=body)
                    assert refused.status_code == 403, (service, method, path, refused.text)
                    assert refused.headers["content-type"] == "application/problem+json"


async def test_an_older_data_folder_is_upgraded_and_its_platform_token_revoked(
    tmp_path: Path,
) -> None:
    # What an older `modelcloud up` left: a folder open to everyone, and two admins (the
    # second one's token handed to both the builder and the gateway).
    data = tmp_path / "platform"
    data.mkdir()
    data.chmod(0o755)
    settings = RegistrySettings(data_dir=data / "registry")
    old = {name: await create_admin_user(settings, name) for name in ("admin", "platform")}
    for name, token in old.items():
        (data / f"{name}.token").write_text(token + "\n")
        (data / f"{name}.token").chmod(0o644)

    async with platform(data) as up:
        assert_private(data)
        assert up.token("admin") == old["admin"]  # the CLI's token carries on
        async with up.client(old["platform"]) as former:
            answer = await former.get("/v1/projects")
            assert answer.status_code == 401, answer.text
        async with up.client(old["admin"]) as admin:
            me = await admin.get("/v1/me")
            assert me.json()["is_admin"] is True
        builder = up.token("builder")

    # A second start of the upgraded folder: same tokens, still private, still working.
    data.chmod(0o755)
    async with platform(data) as up:
        assert_private(data)
        assert up.token("builder") == builder
        async with up.client(up.token("gateway")) as gateway:
            listing = await gateway.get("/v1/projects")
            assert listing.status_code == 200, listing.text
        async with up.client(old["platform"]) as former:
            assert (await former.get("/v1/projects")).status_code == 401


async def test_the_cli_makes_service_accounts_for_a_deployment_of_separate_services(
    tmp_path: Path,
) -> None:
    """``modelcloud registry create-service-account``: what a compose deployment runs."""
    cli = str(Path(sys.executable).with_name("modelcloud"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}

    def create(*args: str) -> subprocess.CompletedProcess[str]:
        command = [cli, "registry", "create-service-account", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, capture_output=True, text=True, check=False, env=env)

    made = await asyncio.to_thread(create, "gateway", "--role", "gateway")
    assert made.returncode == 0, made.stderr
    wrong = await asyncio.to_thread(create, "gateway2", "--role", "admin")
    assert wrong.returncode == 2
    assert "one of: builder, gateway" in wrong.stderr

    settings = RegistrySettings(data_dir=tmp_path)
    bus = LocalBus(tmp_path / "events.db")
    await bus.start()
    try:
        async with running_registry(settings, bus) as registry:
            gateway = registry.as_user(made.stdout.strip())
            assert (await registry.client.get("/v1/projects", headers=gateway)).status_code == 200
            takeover = await registry.client.post(
                "/v1/projects", json={"name": "mine", "type": "cv"}, headers=gateway
            )
            assert takeover.status_code == 403, takeover.text
    finally:
        await bus.close()
