"""Issue 13, item 6: a project always keeps an admin, and a service never registers a port
of the platform itself."""

import asyncio
from typing import Any

import pytest

from modelcloud_testing.registries import Registry, make_service

PROBLEM = "application/problem+json"
MEMBERS = "/v1/projects/vision/members"


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def roles(registry: Registry) -> dict[str, str]:
    listed = await registry.client.get(MEMBERS)
    return {m["user"]: m["role"] for m in listed.json()}


# ---------------------------------------------------------------- the last admin


async def test_the_last_admin_of_a_project_cannot_be_demoted(registry: Registry) -> None:
    ada = registry.as_user(await registry.user_token("ada"))
    created = await registry.client.post("/v1/projects", json={"name": "vision"}, headers=ada)
    assert created.status_code == 201, created.text

    for role in ("write", "read"):
        refused = await registry.client.put(f"{MEMBERS}/ada", json={"role": role}, headers=ada)
        assert "ada is the last admin of project 'vision'" in problem(refused, 409)["detail"]
        # Not by a platform admin either: the project would have nobody to manage it.
        refused = await registry.client.put(f"{MEMBERS}/ada", json={"role": role})
        problem(refused, 409)
    assert await roles(registry) == {"ada": "admin"}
    still = await registry.client.put(f"{MEMBERS}/ada", json={"role": "admin"}, headers=ada)
    assert still.status_code == 200  # keeping the role is no change


async def test_an_admin_steps_down_once_another_admin_is_there(registry: Registry) -> None:
    ada = registry.as_user(await registry.user_token("ada"))
    bob = registry.as_user(await registry.user_token("bob"))
    await registry.client.post("/v1/projects", json={"name": "vision"}, headers=ada)
    promoted = await registry.client.put(f"{MEMBERS}/bob", json={"role": "admin"}, headers=ada)
    assert promoted.status_code == 200, promoted.text

    stepped_down = await registry.client.put(f"{MEMBERS}/ada", json={"role": "read"}, headers=ada)
    assert stepped_down.status_code == 200, stepped_down.text
    last = await registry.client.put(f"{MEMBERS}/bob", json={"role": "write"}, headers=bob)
    assert "bob is the last admin" in problem(last, 409)["detail"]
    assert await roles(registry) == {"ada": "read", "bob": "admin"}
    members = await registry.client.get(MEMBERS, headers=bob)
    assert members.status_code == 200  # bob still manages the project


# ---------------------------------------------------------------- service ports


@pytest.fixture(autouse=True)
def whole_replica_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default range (a parallel test run gives each process a share of it), which
    these tests name; they start no replica."""
    monkeypatch.delenv("REGISTRY_SERVICE_PORT_MIN", raising=False)
    monkeypatch.delenv("REGISTRY_SERVICE_PORT_MAX", raising=False)


@pytest.mark.parametrize(
    "port",
    [
        8000,  # the gateway
        8001,  # the registry itself
        8004,
        5432,  # PostgreSQL
        5672,  # RabbitMQ
        15672,  # RabbitMQ management
        9000,  # S3 (MinIO), or a model server started by hand
        9100,
        19999,
        30000,
    ],
)
async def test_a_service_cannot_register_a_platform_port(registry: Registry, port: int) -> None:
    await make_service(registry.client)  # project vision, group default
    answer = await registry.client.post(
        "/v1/projects/vision/services", json={"name": "squatter", "group": "default", "port": port}
    )
    body = problem(answer, 422)
    assert [e["field"] for e in body["errors"]] == ["port"]
    assert f"{port} is outside the service port range 20000-29999" in body["detail"]
    listed = await registry.client.get("/v1/projects/vision/services")
    assert [s["name"] for s in listed.json()] == ["classifier"]


async def test_the_all_in_one_ports_are_refused_inside_the_range(tmp_path: Any) -> None:
    # `modelcloud up --port 20000` puts the gateway and its services at 20000-20004.
    from modelcloud_testing.registries import running_registry
    from services.common.events.local import LocalBus
    from services.registry.settings import RegistrySettings

    bus = LocalBus(tmp_path / "events.db")
    await bus.start()
    try:
        settings = RegistrySettings(data_dir=tmp_path / "registry", port=20001)
        async with running_registry(settings, bus) as registry:
            first = await make_service(registry.client)
            assert first["port"] == 20005  # a free port skips the platform's own
            for port in (20000, 20001, 20004):
                answer = await registry.client.post(
                    "/v1/projects/vision/services",
                    json={"name": "squatter", "group": "default", "port": port},
                )
                assert "a port of the platform itself" in problem(answer, 422)["detail"]
            assert (await make_service(registry.client, service="other", port=20006))["port"]
    finally:
        await bus.close()


async def test_ports_inside_the_replica_range_are_still_accepted(registry: Registry) -> None:
    low = await make_service(registry.client, port=20000)
    high = await make_service(registry.client, service="other", port=29999)
    assert (low["port"], high["port"]) == (20000, 29999)


@pytest.mark.postgres
async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    tmp_path: Any, postgres_url: str
) -> None:
    from modelcloud_testing.registries import running_registry
    from services.common.events.local import LocalBus
    from services.registry.settings import RegistrySettings

    bus = LocalBus(tmp_path / "events.db")
    await bus.start()
    try:
        settings = RegistrySettings(data_dir=tmp_path / "registry", database_url=postgres_url)
        async with running_registry(settings, bus) as registry:
            ada = registry.as_user(await registry.user_token("ada"))
            bob = registry.as_user(await registry.user_token("bob"))
            await registry.client.post("/v1/projects", json={"name": "vision"}, headers=ada)
            await registry.client.put(f"{MEMBERS}/bob", json={"role": "admin"}, headers=ada)

            for _ in range(5):
                answers = await asyncio.gather(
                    registry.client.put(f"{MEMBERS}/bob", json={"role": "read"}, headers=ada),
                    registry.client.put(f"{MEMBERS}/ada", json={"role": "read"}, headers=bob),
                )
                # The later one finds the other already demoted (409), or itself (403).
                first, second = sorted(a.status_code for a in answers)
                assert first == 200
                assert second in (403, 409), [a.text for a in answers]
                now = await roles(registry)
                assert sorted(now.values()) == ["admin", "read"], now
                # Back to two admins for the next round.
                admin = ada if now["ada"] == "admin" else bob
                other = "bob" if now["ada"] == "admin" else "ada"
                back = await registry.client.put(
                    f"{MEMBERS}/{other}", json={"role": "admin"}, headers=admin
                )
                assert back.status_code == 200, back.text
    finally:
        await bus.close()
