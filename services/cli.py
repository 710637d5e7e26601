"""Platform commands added to the ``modelcloud`` CLI when the platform is installed:
``modelcloud serve NAME``, ``modelcloud registry create-admin`` and
``modelcloud registry create-service-account``.

The SDK finds this module through the ``modelcloud.cli`` entry point, so the SDK itself
never imports the platform.
"""

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from services.common.serving import server_config
from services.common.settings import ServiceSettings

SERVICES = ("gateway", "registry", "builder", "filestore", "metrics")


def register(app: typer.Typer) -> None:
    app.command(help="Run one platform service on this machine (SQLite + local bus by default).")(
        serve
    )
    app.command(help="Run the whole platform on this machine, with nothing else to install.")(up)
    registry = typer.Typer(help="Registry administration.", no_args_is_help=True)
    registry.command("create-admin")(create_admin)
    registry.command("create-service-account")(create_service_account)
    app.add_typer(registry, name="registry")


def serve(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the service keeps its database and files.")
    ] = None,
) -> None:
    """Serve ``name``; settings come from its environment variables, then these options."""
    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; one of: {', '.join(SERVICES)}")
    overrides = {k: v for k, v in {"port": port, "host": host, "data_dir": data_dir}.items() if v}
    app, settings = _service(name, overrides)
    typer.echo(
        f"{name} serving at http://{settings.host}:{settings.port} (data in {settings.data_dir})"
    )
    uvicorn.Server(server_config(app, settings.host, settings.port)).run()


def _service(name: str, overrides: dict[str, Any]) -> tuple[Any, ServiceSettings]:
    # Imported here: `modelcloud serve registry` loads only the registry.
    if name == "gateway":
        from services.gateway.main import create_app as gateway_app
        from services.gateway.settings import GatewaySettings

        gateway_settings = GatewaySettings(**overrides)
        return gateway_app(gateway_settings), gateway_settings
    if name == "builder":
        from services.builder.main import create_app as builder_app
        from services.builder.settings import BuilderSettings

        builder_settings = BuilderSettings(**overrides)
        return builder_app(builder_settings), builder_settings
    if name == "filestore":
        from services.filestore.main import create_app as filestore_app
        from services.filestore.settings import FilestoreSettings

        filestore_settings = FilestoreSettings(**overrides)
        return filestore_app(filestore_settings), filestore_settings
    if name == "metrics":
        from services.metrics.main import create_app as metrics_app
        from services.metrics.settings import MetricsSettings

        metrics_settings = MetricsSettings(**overrides)
        return metrics_app(metrics_settings), metrics_settings
    from services.registry.main import create_app as registry_app
    from services.registry.settings import RegistrySettings

    registry_settings = RegistrySettings(**overrides)
    return registry_app(registry_settings), registry_settings


def create_admin(
    name: Annotated[str, typer.Argument(help="The admin's user name.")],
    data_dir: Annotated[Path | None, typer.Option(help="The registry's data folder.")] = None,
) -> None:
    """Create an admin user and print a token for it (shown once). There is no default admin
    and no default password."""
    from services.registry.admin import create_admin_user
    from services.registry.settings import RegistrySettings

    settings = RegistrySettings(**({"data_dir": data_dir} if data_dir else {}))  # type: ignore[arg-type]
    token = asyncio.run(create_admin_user(settings, name))
    typer.echo(token)


def create_service_account(
    name: Annotated[str, typer.Argument(help="The account's user name, e.g. builder.")],
    role: Annotated[str, typer.Option(help="What it may read: builder or gateway.")],
    data_dir: Annotated[Path | None, typer.Option(help="The registry's data folder.")] = None,
) -> None:
    """Create a platform service's account (not an admin: it may make only its service's
    reads, in every project) and print a token for it (shown once); for an existing account
    of that role, print a new token."""
    from services.registry.accounts.models import ServiceRole
    from services.registry.admin import create_service_account as create_account
    from services.registry.settings import RegistrySettings

    try:
        service_role = ServiceRole(role)
    except ValueError:
        roles = ", ".join(r.value for r in ServiceRole)
        raise typer.BadParameter(f"one of: {roles}", param_hint="--role") from None
    settings = RegistrySettings(**({"data_dir": data_dir} if data_dir else {}))  # type: ignore[arg-type]
    try:
        token = asyncio.run(create_account(settings, name, service_role))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    typer.echo(token)


def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the platform keeps everything [default: ~/.modelcloud/platform]"),
    ] = None,
    port: Annotated[
        int, typer.Option(help="The gateway's port; the services take the next 3.")
    ] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Start the gateway, registry, builder and file store in this process (Ctrl-C stops
    them and every model replica; the next start brings back what was online)."""
    from services.embedded import Platform, run

    def ready(platform: Platform) -> None:
        typer.echo(f"ModelCloud is up at {platform.url}")
        typer.echo(f"  admin token: {platform.admin_token_file} (the modelcloud CLI uses it)")
        typer.echo(f"  data: {platform.data_dir}")
        typer.echo(
            f"  training runs: {platform.url}/v1/projects/<project>/runs/dashboard#token=<token>"
        )
        typer.echo("Ctrl-C stops it.")

    folder = data_dir or Path.home() / ".modelcloud" / "platform"
    asyncio.run(run(folder, port=port, host=host, on_ready=ready))
