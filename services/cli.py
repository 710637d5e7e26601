"""Platform commands added to the ``modelcloud`` CLI when the platform is installed:
``modelcloud serve NAME``, ``modelcloud registry create-admin``,
``modelcloud registry create-service-account`` and ``modelcloud events dlq ...``.

The SDK finds this module through the ``modelcloud.cli`` entry point, so the SDK itself
never imports the platform.
"""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvicorn

from services.common.serving import server_config
from services.common.settings import ServiceSettings

if TYPE_CHECKING:
    from services.common.events.bus import EventBus

SERVICES = ("gateway", "registry", "builder", "filestore", "metrics")
T = TypeVar("T")


def register(app: typer.Typer) -> None:
    app.command(help="Run one platform service on this machine (SQLite + local bus by default).")(
        serve
    )
    app.command(help="Run the whole platform on this machine, with nothing else to install.")(up)
    registry = typer.Typer(help="Registry administration.", no_args_is_help=True)
    registry.command("create-admin")(create_admin)
    registry.command("create-service-account")(create_service_account)
    app.add_typer(registry, name="registry")
    events = typer.Typer(help="The event bus, for operators.", no_args_is_help=True)
    dlq = typer.Typer(
        help="Dead-letter queues: envelopes a consumer could not handle, kept for a replay.",
        no_args_is_help=True,
    )
    dlq.command("list")(dlq_list)
    dlq.command("show")(dlq_show)
    dlq.command("replay")(dlq_replay)
    dlq.command("purge")(dlq_purge)
    events.add_typer(dlq, name="dlq")
    app.add_typer(events, name="events")
    filestore = typer.Typer(help="File store administration.", no_args_is_help=True)
    filestore.command("collect")(collect_blobs)
    app.add_typer(filestore, name="filestore")


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


def collect_blobs(
    data_dir: Annotated[Path | None, typer.Option(help="The file store's data folder.")] = None,
) -> None:
    """Delete now the blobs no file refers to any more (the file store also does it every
    FILESTORE_GC_INTERVAL_S): those older than the longest upload plus the grace period."""
    from services.filestore.blobs.collector import collect_with
    from services.filestore.settings import FilestoreSettings

    settings = FilestoreSettings(**({"data_dir": data_dir} if data_dir else {}))  # type: ignore[arg-type]
    collected = asyncio.run(collect_with(settings))
    typer.echo(f"removed {len(collected.keys)} objects, {collected.bytes} bytes")


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


# ------------------------------------------------------------------ modelcloud events dlq

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="The data folder of `modelcloud up` (or of `modelcloud serve`) whose local bus "
        "to open [default: ~/.modelcloud/platform]."
    ),
]
BrokerUrlOption = Annotated[
    str | None,
    typer.Option(
        envvar="MODELCLOUD_BROKER_URL",
        help="amqp:// URL of the platform's RabbitMQ; without it, the local bus.",
        show_default=False,
    ),
]
QueueArgument = Annotated[str, typer.Argument(help="The consumer's queue, e.g. builder.")]


def dlq_list(data_dir: DataDirOption = None, broker_url: BrokerUrlOption = None) -> None:
    """Each consumer queue and how many dead letters wait in its dead-letter queue."""
    counts = _on_bus(data_dir, broker_url, lambda bus: bus.dead_letter_counts())
    width = max((len(queue) for queue in counts), default=5)
    typer.echo(f"{'QUEUE':<{width}}  DEAD LETTERS")
    for queue, count in counts.items():
        typer.echo(f"{queue:<{width}}  {count}")


def dlq_show(
    queue: QueueArgument,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 20,
    body: Annotated[bool, typer.Option(help="Print each message's body too.")] = False,
    data_dir: DataDirOption = None,
    broker_url: BrokerUrlOption = None,
) -> None:
    """The dead letters of QUEUE, oldest first: id, type, why, how many deliveries."""

    async def show(bus: "EventBus") -> None:
        await _known_queue(bus, queue, broker_url)
        for letter in await bus.dead_letters(queue, limit=limit):
            typer.echo(
                _printable(
                    f"{letter.id}  {letter.type or '(not an envelope)'}  {letter.reason}  "
                    f"deliveries={letter.deliveries}"
                )
            )
            if body:
                typer.echo(_printable(letter.body[:_MAX_BODY_BYTES].decode(errors="replace")))

    _on_bus(data_dir, broker_url, show)


def dlq_replay(
    queue: QueueArgument,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Replay only this dead letter (repeatable); default: all."),
    ] = None,
    data_dir: DataDirOption = None,
    broker_url: BrokerUrlOption = None,
) -> None:
    """Deliver dead letters to QUEUE again (only its consumer sees them) and remove them
    from the dead-letter queue."""

    async def replay(bus: "EventBus") -> int:
        await _known_queue(bus, queue, broker_url)
        try:
            return await bus.replay_dead_letters(queue, ids=ids or None)
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from None

    replayed = _on_bus(data_dir, broker_url, replay)
    typer.echo(f"replayed {replayed} dead letters to {queue}")
    if ids and replayed < len(ids):
        typer.echo(f"{len(ids) - replayed} of the ids were not in {queue}.dlq", err=True)
        raise typer.Exit(1)


def dlq_purge(
    queue: QueueArgument,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    data_dir: DataDirOption = None,
    broker_url: BrokerUrlOption = None,
) -> None:
    """Drop every dead letter of QUEUE (they cannot be replayed afterwards)."""
    if not yes:
        typer.confirm(f"Drop every dead letter of {queue}?", abort=True)

    async def purge(bus: "EventBus") -> int:
        await _known_queue(bus, queue, broker_url)
        return await bus.purge_dead_letters(queue)

    typer.echo(f"purged {_on_bus(data_dir, broker_url, purge)} dead letters of {queue}")


_MAX_BODY_BYTES = 4000


def _on_bus(
    data_dir: Path | None, broker_url: str | None, work: Callable[["EventBus"], Awaitable[T]]
) -> T:
    from services.common.events.bus import BusUnavailable, EventBus
    from services.common.events.local import LocalBus
    from services.common.events.rabbitmq import RabbitBus

    bus: EventBus
    if broker_url is not None:
        # Declares nothing: an operator's look must not create queues.
        bus = RabbitBus(broker_url, queues={}, name="modelcloud-events-cli")
    else:
        path = (data_dir or Path.home() / ".modelcloud" / "platform") / "events.db"
        if not path.is_file():
            raise typer.BadParameter(f"no local bus at {path}", param_hint="--data-dir")
        # Beside a running platform: leave its in-flight messages and queues alone.
        bus = LocalBus(path, queues={}, take_over=False)

    async def run() -> T:
        try:
            await bus.start()
            return await work(bus)
        finally:
            await bus.close()

    try:
        return asyncio.run(run())
    except (BusUnavailable, ConnectionError) as exc:  # a broker gone mid-way: no traceback
        typer.echo(f"the event bus is unavailable: {exc}", err=True)
        raise typer.Exit(1) from None


def _printable(text: str) -> str:
    """``text`` for an operator's terminal: a dead letter is whatever a publisher sent, and
    its control characters (escape sequences) are shown escaped, never obeyed."""
    return "".join(c if c.isprintable() or c in "\n\t" else ascii(c)[1:-1] for c in text)


async def _known_queue(bus: "EventBus", queue: str, broker_url: str | None) -> None:
    """The local bus knows every queue; RabbitMQ's (no listing over AMQP) answer for theirs."""
    if broker_url is not None:
        return
    known = await bus.dead_letter_counts()
    if queue not in known:
        raise typer.BadParameter(f"no queue {queue!r}; known: {', '.join(known)}")
