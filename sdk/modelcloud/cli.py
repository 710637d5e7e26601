"""The ``modelcloud`` command line."""

import json
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console

from modelcloud._platform import Platform, PlatformError, connection
from modelcloud.client import ModelClient
from modelcloud.exceptions import ModelCloudError
from modelcloud.version import __version__

app = typer.Typer(
    name="modelcloud",
    help="ModelCloud: turn ML models into reliable APIs.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)
T = TypeVar("T")


@app.command()
def version() -> None:
    """Print the SDK version."""
    typer.echo(__version__)


@app.command()
def meta(url: Annotated[str, typer.Argument(help="The model service's URL.")]) -> None:
    """Print a model service's manifest (its commands, inputs and outputs) as JSON."""
    with _client(url) as client:
        typer.echo(_guarded(lambda: client.meta().model_dump_json(indent=2, exclude_none=True)))


@app.command()
def call(
    url: Annotated[
        str,
        typer.Argument(
            help="The model service's URL, or PROJECT/SERVICE[/vN] on the configured platform."
        ),
    ],
    command: Annotated[str, typer.Argument(help="The command to run, e.g. classify.")],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Inputs as key=value, or key=@path to upload a file."),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the model to be ready.")] = 0,
) -> None:
    """Call a command of a model service and print its outputs as JSON."""
    values: dict[str, Any] = {}
    for item in inputs or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not key=value or key=@file", param_hint="INPUTS")
        if value.startswith("@"):
            path = Path(value[1:])
            if not path.is_file():
                raise typer.BadParameter(f"{key}: no such file {path}", param_hint="INPUTS")
            values[key] = path
        else:
            values[key] = value
    with _client(url) as client:
        if wait:
            _guarded(lambda: client.wait_ready(wait))
        outputs = _guarded(lambda: client.call_with(command, values, form=True))
    typer.echo(json.dumps(outputs, indent=2, ensure_ascii=False))


def _client(url: str) -> ModelClient:
    """A model server's URL as it is; the configured platform's URLs, and PROJECT/SERVICE
    names on it, with the platform's token."""
    if url.startswith(("http://", "https://")):
        try:
            conn = connection()
        except PlatformError:
            return ModelClient(url)
        same = url.rstrip("/") == conn.url or url.startswith(conn.url + "/")
        return ModelClient(url, token=conn.token if same else None)
    conn = _guarded(connection)
    return ModelClient(f"{conn.url}/models/{url.strip('/')}", token=conn.token)


def _guarded(action: Callable[[], T]) -> T:
    try:
        return action()
    except ModelCloudError as exc:
        err.print(f"[red]error[/red] {exc.title}: {exc.detail or ''}")
        for field_error in exc.errors:
            err.print(f"  {field_error.field}: {field_error.message}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        err.print(f"[red]error[/red] cannot reach the model service: {exc}")
        raise typer.Exit(1) from None
    except PlatformError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def deploy(
    folder: Annotated[Path, typer.Argument(help="The model's folder (with cloud_model.py).")],
    project: Annotated[str, typer.Option(help="Project (created if missing).")] = "default",
    group: Annotated[str, typer.Option(help="Service group (created if missing).")] = "default",
    name: Annotated[
        str | None, typer.Option(help="Service name [default: modelcloud.yml's, or the folder's]")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Version [default: next N.0]")] = None,
    port: Annotated[int | None, typer.Option(help="Port for a new service.")] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Replicas to start.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Register, upload, build (with live logs), publish, and print the gateway URL."""
    platform = Platform(_guarded(connection))
    try:
        log = (lambda line: None) if as_json else (lambda line: err.print(line, markup=False))
        done = _guarded(
            lambda: platform.deploy(
                folder,
                project=project,
                group=group,
                name=name,
                version=version,
                port=port,
                replicas=replicas,
                log=log,
            )
        )
    finally:
        platform.close()
    if as_json:
        typer.echo(json.dumps(done.__dict__))
    else:
        typer.echo(f"{done.project}/{done.service} {done.version} is online as v{done.api_version}")
        typer.echo(done.url)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Every version of every service you can see, with its state."""
    platform = Platform(_guarded(connection))
    try:
        rows = _guarded(platform.status)
    finally:
        platform.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        api = f"v{row['api_version']}" if row["api_version"] else "-"
        typer.echo(
            f"{row['project']}/{row['service']} {row['version']:<10} {row['state']:<15} {api:<4} "
            f"replicas={row['replicas']}"
        )


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="PROJECT/SERVICE[@VERSION]")],
) -> None:
    """Print the build log of a service's version (the newest build), following it live."""
    project, _, rest = service.partition("/")
    name, _, version = rest.partition("@")
    platform = Platform(_guarded(connection))
    try:
        params = {"service": name, **({"version": version} if version else {})}
        builds = _guarded(
            lambda: platform.request("GET", f"/v1/projects/{project}/builds", params=params)
        )
        if not builds:
            err.print(f"no build of {service} yet")
            raise typer.Exit(1)
        for line in _guarded(lambda: list(platform.follow_logs(project, builds[-1]["id"]))):
            typer.echo(line)
    finally:
        platform.close()


@app.command()
def offline(
    service: Annotated[str, typer.Argument(help="PROJECT/SERVICE@VERSION")],
) -> None:
    """Take a version offline: its replicas stop and its URL answers 404."""
    project, _, rest = service.partition("/")
    name, _, version = rest.partition("@")
    if not (project and name and version):
        raise typer.BadParameter("write PROJECT/SERVICE@VERSION", param_hint="SERVICE")
    platform = Platform(_guarded(connection))
    try:
        path = f"/v1/projects/{project}/services/{name}/versions/{version}/offline"
        _guarded(lambda: platform.request("POST", path))
    finally:
        platform.close()
    typer.echo(f"{project}/{name} {version} is going offline")


token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for.")] = "cli",
) -> None:
    """Create an API token for yourself and print it (it is shown once)."""
    platform = Platform(_guarded(connection))
    try:
        issued = _guarded(lambda: platform.request("POST", "/v1/tokens", json={"name": name}))
    finally:
        platform.close()
    typer.echo(issued["token"])


def _add_plugins() -> None:
    # The platform (services) adds `serve`, `registry ...` when it is installed; the SDK
    # never imports it directly.
    for entry_point in entry_points(group="modelcloud.cli"):
        entry_point.load()(app)


def main() -> None:
    _add_plugins()
    app(prog_name="modelcloud")


if __name__ == "__main__":
    main()
