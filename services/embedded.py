"""The embedded default, ``modelcloud up``: the gateway, registry, builder, file store and
metrics service in one process on this machine, with SQLite, one in-process event bus, the
local-directory file store and the venv runtime, all under one data folder.

First start: an admin user and the builder's and gateway's service accounts are created (no
default password); their tokens are written to ``admin.token``, ``builder.token`` and
``gateway.token`` (mode 0600) in the data folder (mode 0700: nobody but the platform's user
reads anything in it), and ``~/.modelcloud/config.json`` points the CLI at the gateway. Each
service account makes only its service's reads (``services/registry/accounts/
service_roles.py``); the file store and metrics service act with their callers' tokens and
hold none. A data folder from a version that gave both services one admin ``platform.token``
has that token revoked and its file removed at the next start. Ctrl-C stops every
service and every replica; the next start finds every service, version and online model as
it left them (the builder starts the wanted replicas again on their ports).
"""

import asyncio
import contextlib
import json
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from services.builder.main import create_app as builder_app
from services.builder.settings import BuilderSettings
from services.common.events.local import LocalBus
from services.common.serving import server_config
from services.filestore.main import create_app as filestore_app
from services.filestore.settings import FilestoreSettings
from services.gateway.main import create_app as gateway_app
from services.gateway.settings import GatewaySettings
from services.metrics.main import create_app as metrics_app
from services.metrics.settings import MetricsSettings
from services.registry.accounts.models import ServiceRole
from services.registry.admin import create_admin_user, create_service_account, retire_token_owner
from services.registry.main import create_app as registry_app
from services.registry.settings import RegistrySettings

CONFIG = Path.home() / ".modelcloud" / "config.json"


@dataclass(frozen=True)
class Platform:
    url: str
    data_dir: Path
    admin_token_file: Path


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the platform, which stops every server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run(
    data_dir: Path,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    config_file: Path | None = CONFIG,
    on_ready: Callable[[Platform], None] = lambda platform: None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the platform until ``stop`` is set (or SIGINT/SIGTERM)."""
    data_dir = await asyncio.to_thread(_prepare, data_dir)
    stop = stop or asyncio.Event()
    urls = {name: f"http://{host}:{port + i}" for i, name in enumerate(_SERVICES)}
    registry_settings = RegistrySettings(data_dir=data_dir / "registry", host=host, port=port + 1)
    admin_file, service_tokens = await _tokens(registry_settings, data_dir)
    replica_key = await asyncio.to_thread(_replica_key, data_dir)
    # Started in order, stopped in reverse whatever happens (as each service's runtime
    # does with its own parts): the servers, the gateway first, then the shared bus.
    async with contextlib.AsyncExitStack() as stack:
        bus = LocalBus(data_dir / "events.db")
        await bus.start()
        stack.push_async_callback(bus.close)
        apps: list[tuple[FastAPI, int]] = [
            (registry_app(registry_settings, bus=bus), port + 1),
            (
                builder_app(
                    BuilderSettings(
                        data_dir=data_dir / "builder",
                        host=host,
                        port=port + 2,
                        registry_url=urls["registry"],
                        registry_token=service_tokens[ServiceRole.BUILDER],
                        replica_key=replica_key,
                        stop_replicas_on_exit=True,
                    ),
                    bus=bus,
                ),
                port + 2,
            ),
            (
                filestore_app(
                    FilestoreSettings(
                        data_dir=data_dir / "filestore",
                        host=host,
                        port=port + 3,
                        registry_url=urls["registry"],
                    )
                ),
                port + 3,
            ),
            (
                metrics_app(
                    MetricsSettings(
                        data_dir=data_dir / "metrics",
                        host=host,
                        port=port + 4,
                        registry_url=urls["registry"],
                    )
                ),
                port + 4,
            ),
            (
                gateway_app(
                    GatewaySettings(
                        data_dir=data_dir / "gateway",
                        host=host,
                        port=port,
                        registry_url=urls["registry"],
                        builder_url=urls["builder"],
                        filestore_url=urls["filestore"],
                        metrics_url=urls["metrics"],
                        registry_token=service_tokens[ServiceRole.GATEWAY],
                        replica_key=replica_key,
                    ),
                    bus=bus,
                ),
                port,
            ),
        ]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        stack.callback(_restore_signals, loop)
        platform = Platform(urls["gateway"], data_dir, admin_file)
        for app, app_port in apps:  # in order: the registry first, the gateway last
            if app_port == port and config_file is not None:
                # written before the front door answers: whoever sees the gateway up finds it
                _write_config(config_file, platform)
            server = _Server(server_config(app, host, app_port))
            serving = asyncio.create_task(server.serve())
            stack.push_async_callback(_stop_server, server, serving)
            while not server.started:
                if serving.done():
                    await serving  # raises why it could not start (a port in use, ...)
                    raise RuntimeError("a platform service stopped while starting")
                await asyncio.sleep(0.05)
        on_ready(platform)
        await stop.wait()


async def _stop_server(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(Exception):
        await serving


def _restore_signals(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)


_SERVICES = ("gateway", "registry", "builder", "filestore", "metrics")


def _prepare(data_dir: Path) -> Path:
    data_dir = data_dir.resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode goes through the umask and leaves an existing folder as it was (an older
    # version made it 0755): the platform's user alone may enter it.
    data_dir.chmod(0o700)
    return data_dir


async def _tokens(
    settings: RegistrySettings, data_dir: Path
) -> tuple[Path, dict[ServiceRole, str]]:
    """The admin's token file and each service's token, created on first start; the old
    shared admin ``platform.token`` revoked and removed."""
    admin_file = data_dir / "admin.token"
    if await asyncio.to_thread(_read_secret, admin_file) is None:
        admin = await create_admin_user(settings, "admin")
        await asyncio.to_thread(_write_secret, admin_file, admin)
    tokens: dict[ServiceRole, str] = {}
    for role in ServiceRole:
        path = data_dir / f"{role}.token"
        token = await asyncio.to_thread(_read_secret, path)
        if not token:  # an account left without its file gets a new token
            token = await create_service_account(settings, role.value, role)
            await asyncio.to_thread(_write_secret, path, token)
        tokens[role] = token
    # Revoked rather than left unused: it sat where model code could read it, and an admin
    # token nothing needs is only a risk. Revoked before its file goes, so a start that
    # stops in between revokes it again next time.
    platform_file = data_dir / "platform.token"
    old = await asyncio.to_thread(_read_secret, platform_file)
    if old is not None:
        if old:
            await retire_token_owner(settings, old)
        await asyncio.to_thread(platform_file.unlink)
    return admin_file, tokens


def _read_secret(path: Path) -> str | None:
    """The token in ``path``, or None without the file. Its mode is set to 0600 in passing:
    an older version or a person may have left it readable to others."""
    try:
        path.chmod(0o600)
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _write_secret(path: Path, token: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(token + "\n")


def _replica_key(data_dir: Path) -> str:
    """The secret the builder and the gateway share (``replica.key``, made on first start):
    replicas answer only calls that carry the key derived from it for their version."""
    path = data_dir / "replica.key"
    key = _read_secret(path)
    if not key:
        key = secrets.token_urlsafe(32)
        _write_secret(path, key)
    return key


def _write_config(path: Path, platform: Platform) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"url": platform.url, "token_file": str(platform.admin_token_file)}
    path.write_text(json.dumps(config, indent=2) + "\n")
