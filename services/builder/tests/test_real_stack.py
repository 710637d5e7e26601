"""The builder on the real servers: its own PostgreSQL database, events over RabbitMQ, next
to a registry on another database: a bundle is built, published, called, taken offline."""

from collections.abc import Callable
from pathlib import Path

import pytest

from modelcloud_testing.deployments import build, greet, publish, replica_processes
from modelcloud_testing.platforms import Platform, greeter, running_builder
from modelcloud_testing.polling import wait_for
from modelcloud_testing.registries import make_service, running_registry
from modelcloud_testing.servers import RABBITMQ, fresh_postgres_database
from services.builder.settings import BuilderSettings
from services.common.events.rabbitmq import RabbitBus
from services.registry.settings import RegistrySettings

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.timeout(600)]


async def test_build_publish_and_offline_on_postgres_and_rabbitmq(
    tmp_path: Path, builder_settings: Callable[..., BuilderSettings]
) -> None:
    bus = RabbitBus(RABBITMQ)
    await bus.start()
    try:
        async with (
            fresh_postgres_database() as registry_db,
            fresh_postgres_database() as builder_db,
            running_registry(
                RegistrySettings(
                    data_dir=tmp_path / "registry",
                    database_url=registry_db,
                    broker_url=RABBITMQ,
                    outbox_poll_interval_s=0.05,
                ),
                bus,
            ) as registry,
        ):
            await make_service(registry.client, service="greeter", performance={"device": "cpu"})
            settings = builder_settings(
                registry_token=registry.admin_token,
                database_url=builder_db,
                broker_url=RABBITMQ,
                outbox_poll_interval_s=0.05,
            )
            async with running_builder(settings, registry) as (app, client):
                platform = Platform(registry, app, client, settings)
                built = await build(platform, "1.0", greeter("hej"))
                assert built["state"] == "built", built["state_detail"]
                online = await publish(platform, "1.0")
                assert online["state"] == "online", online["state_detail"]
                assert await greet(online["replicas"][0]["address"], "ada") == "hej, ada"
                offline = await registry.client.post(
                    "/v1/projects/vision/services/greeter/versions/1.0/offline"
                )
                assert offline.status_code == 202

                async def stopped() -> bool:
                    (deployment,) = await platform.deployments()
                    return bool(deployment["state"] == "stopped")

                await wait_for(stopped)
            port = online["replicas"][0]["address"].rsplit(":", 1)[1]
            assert not [e for e in replica_processes().values() if e["MODELCLOUD_PORT"] == port]
    finally:
        await bus.close()
