"""Issue 13, finding 4 and part of 6: the gateway forwards only what a caller may call (the
commands a version declares and its ``meta``/``healthz``/``openapi.json`` reads; never
``/setup``), replicas answer nobody but the gateway (the replica key), and the gateway's
public ``/metrics`` names no private project or service."""

import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import FastAPI

from modelcloud_proto.events import Envelope, VersionOnline
from modelcloud_proto.replica_keys import REPLICA_KEY_HEADER, version_key
from modelcloud_proto.specs import Device
from modelcloud_testing.deployments import build, publish
from modelcloud_testing.platforms import GREETER, Platform, running_builder
from modelcloud_testing.polling import wait_for
from modelcloud_testing.registries import Registry
from services.builder.settings import BuilderSettings
from services.embedded import _replica_key
from services.gateway import tables
from services.gateway.main import create_app
from services.gateway.routing import Route, RoutingTable
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.timeout(600)
MODEL = "/models/vision/greeter"
REPLICA_KEY = "shared-by-the-builder-and-the-gateway"
PROBLEM = "application/problem+json"

# The greeter whose greeting is a setup option: what a caller of /setup would change for
# every later caller.
CONFIGURABLE = GREETER.replace(
    "@modelcloud.setup\ndef setup():",
    '@modelcloud.setup(options={"greeting": text(default="hello")})\ndef setup(options):',
).replace(
    'return {"greeting": open("greeting.txt").read().strip()}',
    'return {"greeting": options["greeting"]}',
)


# ----------------------------------------------------------------------------- routing rules


def route(commands: frozenset[str] | None) -> Route:
    return Route("vision", "greeter", uuid4(), "1.0", 1, Device.CPU, False, commands=commands)


@pytest.mark.parametrize(
    ("method", "path", "forwarded"),
    [
        ("POST", "greet", True),
        ("GET", "meta", True),
        ("GET", "healthz", True),
        ("GET", "openapi.json", True),
        ("POST", "setup", False),
        ("GET", "setup", False),
        ("POST", "unknown", False),
        ("GET", "greet", False),
        ("POST", "meta", False),
        ("GET", "docs", False),
        ("POST", "greet/../setup", False),
        ("POST", "", False),
    ],
)
def test_only_declared_commands_and_the_reads_are_forwarded(
    method: str, path: str, forwarded: bool
) -> None:
    assert route(frozenset({"greet"})).allows(method, path) is forwarded


def test_a_version_whose_commands_are_unknown_still_never_forwards_setup() -> None:
    unknown = route(None)  # an event from a registry older than the commands field
    assert unknown.allows("POST", "greet")
    assert not unknown.allows("POST", "setup")
    assert not unknown.allows("POST", "a/b")
    assert not unknown.allows("POST", "")
    assert unknown.allows("GET", "meta")


def online_event(**extra: Any) -> Envelope:
    data = {
        "project": "vision",
        "service": "greeter",
        "version_id": str(uuid4()),
        "version": "1.0",
        "api_version": 1,
        "replicas": [{"address": "127.0.0.1:9001", "pool": "cpu"}],
        **extra,
    }
    return Envelope(
        type=VersionOnline.TYPE, version=1, occurred_at=datetime.now(UTC), producer="t", data=data
    )


def test_the_online_event_carries_the_commands_and_the_table_derives_the_key() -> None:
    table = RoutingTable(max_outstanding=2, eject_s=5, replica_key=REPLICA_KEY)
    event = online_event(commands=["greet"])
    tables.apply(table, event)
    found = table.find("vision", "greeter", 1)
    assert found is not None
    assert found.commands == frozenset({"greet"})
    (backend,) = found.backends
    assert backend.key == version_key(REPLICA_KEY, UUID(event.data["version_id"]))
    assert backend.key != version_key(REPLICA_KEY, uuid4())  # a key per version

    tables.apply(table, online_event())  # as an older registry sends it: still read
    older = table.find("vision", "greeter", 1)
    assert older is not None
    assert older.commands is None


# ----------------------------------------------------------------------------- real replicas


@pytest.fixture
async def keyed_platform(
    registry: Registry, builder_settings: Callable[..., BuilderSettings]
) -> AsyncIterator[Platform]:
    """The builder's platform, with the replica key the embedded platform sets."""
    settings = builder_settings(registry_token=registry.admin_token, replica_key=REPLICA_KEY)
    async with running_builder(settings, registry) as (app, client):
        yield Platform(registry, app, client, settings)


@asynccontextmanager
async def running_gateway(
    platform: Platform, replica_key: str | None = REPLICA_KEY
) -> AsyncIterator[httpx.AsyncClient]:
    registry = platform.registry
    settings = GatewaySettings(
        data_dir=platform.settings.data_dir.parent / "gateway",
        registry_token=registry.admin_token,
        replica_key=replica_key,
        allowed_hosts=["gateway"],
    )
    app: FastAPI = create_app(
        settings,
        bus=registry.bus,
        transports={"registry": httpx.ASGITransport(app=registry.app)},
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=60
        ) as client,
    ):
        yield client


def assert_not_found(answer: httpx.Response, *words: str) -> None:
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == PROBLEM
    for word in words:
        assert word in answer.json()["detail"]


async def test_a_reader_cannot_reconfigure_a_model_and_nobody_else_reaches_it(
    keyed_platform: Platform,
) -> None:
    platform = keyed_platform
    registry = platform.registry
    reader = await registry.user_token("reader")
    member = await registry.client.put("/v1/projects/vision/members/reader", json={"role": "read"})
    assert member.status_code == 200, member.text
    as_reader = registry.as_user(reader)
    as_admin = registry.as_user(registry.admin_token)
    built = await build(platform, "1.0", {"cloud_model.py": CONFIGURABLE, "greeting.txt": "-"})
    assert built["state"] == "built", built["state_detail"]
    online = await publish(platform, "1.0")
    assert online["state"] == "online", online["state_detail"]

    async with running_gateway(platform) as gateway:
        greet = {"name": "ada"}
        answered = await gateway.post(f"{MODEL}/v1/greet", json=greet, headers=as_reader)
        assert answered.status_code == 200, answered.text  # the declared command
        assert answered.json() == {"message": "hello, ada"}

        # The attack: a read-only member sets the model's options for everyone.
        for who in (as_reader, as_admin):  # not through the gateway at all, for anyone
            setup = await gateway.post(f"{MODEL}/v1/setup", json={"greeting": "pwned"}, headers=who)
            assert_not_found(setup, "/setup is not callable", "belong to the deployment")
            newest = await gateway.post(f"{MODEL}/setup", json={"greeting": "pwned"}, headers=who)
            assert_not_found(newest)
        after = await gateway.post(f"{MODEL}/v1/greet", json=greet, headers=as_admin)
        assert after.json() == {"message": "hello, ada"}  # the options are unchanged

        unknown = await gateway.post(f"{MODEL}/v1/nope", json=greet, headers=as_reader)
        assert_not_found(unknown, "'nope' is not a command of vision/greeter v1", "greet")
        assert_not_found(await gateway.get(f"{MODEL}/v1/docs", headers=as_reader))
        assert_not_found(await gateway.get(f"{MODEL}/v1/greet", headers=as_reader))
        meta = await gateway.get(f"{MODEL}/v1/meta", headers=as_reader)
        assert meta.status_code == 200
        assert [c["name"] for c in meta.json()["commands"]] == ["greet"]
        document = await gateway.get(f"{MODEL}/v1/openapi.json", headers=as_reader)
        assert document.status_code == 200
        assert "/greet" in document.json()["paths"]
        assert "/setup" not in document.json()["paths"]  # what the gateway answers 404
        stranger = registry.as_user(await registry.user_token("stranger"))
        hidden = await gateway.post(f"{MODEL}/v1/setup", json={}, headers=stranger)
        assert hidden.status_code == 404  # the project's existence stays hidden too
        assert "setup" not in hidden.json()["detail"]

        # Another process on the host, straight to the replica's port: refused without the
        # key, whatever it asks; the key for another version does not open it either.
        (replica,) = online["replicas"]
        direct = f"http://{replica['address']}"
        key = version_key(REPLICA_KEY, UUID(online["id"]))
        async with httpx.AsyncClient(base_url=direct, timeout=30) as other:
            for attempt in (
                other.post("/setup", json={"greeting": "pwned"}),
                other.post("/greet", json=greet),
                other.post("/greet", json=greet, headers={REPLICA_KEY_HEADER: "0" * 64}),
                other.post(
                    "/greet",
                    json=greet,
                    headers={REPLICA_KEY_HEADER: version_key(REPLICA_KEY, uuid4())},
                ),
            ):
                refused = await attempt
                assert refused.status_code == 401, refused.text
                assert refused.headers["content-type"] == PROBLEM
            assert (await other.get("/healthz")).status_code == 200  # the builder's checks
            keyed = await other.post("/greet", json=greet, headers={REPLICA_KEY_HEADER: key})
            assert keyed.status_code == 200
            assert keyed.json() == {"message": "hello, ada"}

        # /metrics answers anyone: it counts the calls without naming the project.
        metrics = await gateway.get("/metrics")
        assert metrics.status_code == 200
        assert f'model_calls_total{{status="200",version_id="{online["id"]}"}}' in metrics.text
        for name in ("vision", "greeter"):
            assert name not in metrics.text

    # A gateway whose secret differs from the builder's: a clear 502, not the caller's 401.
    async with running_gateway(platform, replica_key="not-the-builder-s") as mismatched:
        wrong = await mismatched.post(f"{MODEL}/v1/greet", json=greet, headers=as_reader)
        assert wrong.status_code == 502, wrong.text
        assert "GATEWAY_REPLICA_KEY must equal BUILDER_REPLICA_KEY" in wrong.json()["detail"]


async def test_a_published_version_is_routed_with_its_commands_from_the_event(
    keyed_platform: Platform,
) -> None:
    """The gateway runs before the version goes online: the ``registry.version.online``
    event alone tells it the commands (a restarted gateway reads them from the registry,
    as the test above does)."""
    platform = keyed_platform
    async with running_gateway(platform) as gateway:
        as_admin = platform.registry.as_user(platform.registry.admin_token)
        built = await build(platform, "1.0", {"cloud_model.py": CONFIGURABLE, "greeting.txt": "-"})
        assert built["state"] == "built", built["state_detail"]
        assert (await publish(platform, "1.0"))["state"] == "online"

        async def routed() -> httpx.Response | None:
            answer = await gateway.post(f"{MODEL}/greet", json={"name": "x"}, headers=as_admin)
            routing = answer.status_code == 404 and "online" in answer.json()["detail"]
            return None if routing else answer  # not routed yet, else the command's answer

        first = await wait_for(routed)
        assert first.status_code == 200, first.text
        setup = await gateway.post(f"{MODEL}/setup", json={"greeting": "x"}, headers=as_admin)
        assert_not_found(setup, "/setup is not callable")


def test_the_embedded_platform_makes_its_replica_key_once_readable_by_itself_only(
    tmp_path: Path,
) -> None:
    key = _replica_key(tmp_path)
    stored = tmp_path / "replica.key"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert len(key) >= 40
    assert _replica_key(tmp_path) == key  # the next start: the same key, replicas adopted
