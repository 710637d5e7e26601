"""Issue 13, least privilege for services: the builder's and the gateway's own accounts make
exactly the reads their service makes, in every project, and are refused (403 problem+json)
everything else; an account retired from the old all-admin ``platform`` role keeps nothing."""

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from modelcloud_testing.registries import Registry, make_service, running_registry
from services.common.database import create_engine
from services.common.events.local import LocalBus
from services.common.migrations import upgrade
from services.common.runtime import service_state
from services.registry.accounts import service as accounts_service
from services.registry.accounts.models import ServiceRole
from services.registry.accounts.service_roles import ALLOWED
from services.registry.admin import (
    create_admin_user,
    create_service_account,
    retire_token_owner,
)
from services.registry.main import MIGRATIONS
from services.registry.settings import RegistrySettings
from services.registry.state import RegistryState
from services.registry.tests.test_api import (
    OUTSIDER_REQUESTS,
    assert_problem,
    concrete,
    documented_routes,
    project_snapshot,
    seeded,
)

BUNDLE = "/v1/projects/{project}/services/{name}/versions/{version}/bundle"

# Valid requests for the routes outside a project, so only the role check can refuse them.
ACCOUNT_REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/projects"): {"json": {"name": "takeover", "type": "cv"}},
    ("POST", "/v1/users"): {"json": {"name": "eve", "is_admin": True}},
    ("POST", "/v1/users/{name}/tokens"): {"json": {"name": "more"}},
    ("POST", "/v1/tokens"): {"json": {"name": "more"}},
}


async def service_token(registry: Registry, role: ServiceRole) -> dict[str, str]:
    """An admin creates the account over the API, as a compose deployment would."""
    created = await registry.client.post(
        "/v1/users", json={"name": f"{role}-svc", "service_role": role.value}
    )
    assert created.status_code == 201, created.text
    assert created.json()["service_role"] == role.value
    assert created.json()["is_admin"] is False
    issued = await registry.client.post(f"/v1/users/{role}-svc/tokens", json={"name": "svc"})
    assert issued.status_code == 201, issued.text
    return registry.as_user(issued.json()["token"])


async def assert_refused_everywhere_else(
    registry: Registry, role: ServiceRole, headers: dict[str, str]
) -> None:
    """Every documented route its role does not list answers 403 and changes nothing."""
    before = await project_snapshot(registry)
    refused = 0
    for method, template in documented_routes(registry):
        if (method, template) in ALLOWED[role]:
            continue
        request = OUTSIDER_REQUESTS.get((method, template)) or ACCOUNT_REQUESTS.get(
            (method, template), {}
        )
        path = concrete(template)
        response = await registry.client.request(method, path, headers=headers, **request)
        body = assert_problem(response, 403)
        assert f"the {role} service account may not call" in body["detail"], (method, path)
        refused += 1
    assert refused >= 20  # the whole API, not an empty document
    assert await project_snapshot(registry) == before
    projects = (await registry.client.get("/v1/projects")).json()
    assert "takeover" not in [p["name"] for p in projects]
    users = await registry.client.post("/v1/users", json={"name": "eve"})
    assert users.status_code == 201, users.text  # the service's attempt created no "eve"


async def test_a_builder_token_fetches_any_projects_bundle_and_nothing_else(
    registry: Registry,
) -> None:
    await seeded(registry)  # the admin's project: the builder is no member of it
    builder = await service_token(registry, ServiceRole.BUILDER)
    version = (await registry.client.get(concrete(BUNDLE).removesuffix("/bundle"))).json()

    bundle = await registry.client.get(concrete(BUNDLE), headers=builder)
    assert bundle.status_code == 200, bundle.text
    assert hashlib.sha256(bundle.content).hexdigest() == version["bundle_sha256"]

    # The takeover steps one by one, then every other route.
    for method, path, request in (
        ("POST", "/v1/projects", {"json": {"name": "mine", "type": "cv"}}),
        ("POST", concrete(BUNDLE).replace("/bundle", "/publish"), {"json": {"replicas": 1}}),
        ("PUT", "/v1/projects/vision/members/builder-svc", {"json": {"role": "admin"}}),
        ("POST", "/v1/tokens", {"json": {"name": "more"}}),
        ("POST", "/v1/users/builder-svc/tokens", {"json": {"name": "more"}}),
        ("POST", "/v1/users/admin/tokens", {"json": {"name": "more"}}),
        ("GET", "/v1/projects", {}),  # the admin's listing of every project
    ):
        response = await registry.client.request(method, path, headers=builder, **request)
        assert_problem(response, 403)
    members = (await registry.client.get("/v1/projects/vision/members")).json()
    assert "builder-svc" not in [m["user"] for m in members]
    await assert_refused_everywhere_else(registry, ServiceRole.BUILDER, builder)


async def test_a_gateway_token_reads_the_routing_table_of_every_project_and_nothing_else(
    registry: Registry,
) -> None:
    await seeded(registry)
    await make_service(registry.client, project="audio", service="speech")
    gateway = await service_token(registry, ServiceRole.GATEWAY)

    projects = await registry.client.get("/v1/projects", headers=gateway)
    assert projects.status_code == 200, projects.text
    assert [(p["name"], p["role"]) for p in projects.json()] == [
        ("audio", "read"),
        ("vision", "read"),
    ]
    services = await registry.client.get("/v1/projects/audio/services", headers=gateway)
    assert [s["name"] for s in services.json()] == ["speech"]
    versions = await registry.client.get(
        "/v1/projects/vision/services/classifier/versions", headers=gateway
    )
    assert [v["version"] for v in versions.json()] == ["1.0"]

    for path in (
        concrete(BUNDLE),  # model code: the builder's, not the gateway's
        "/v1/projects/vision/members",
        "/v1/projects/vision",
        "/v1/me",
        "/v1/tokens",
    ):
        assert_problem(await registry.client.get(path, headers=gateway), 403)
    await assert_refused_everywhere_else(registry, ServiceRole.GATEWAY, gateway)


async def test_every_route_a_role_lists_exists(registry: Registry) -> None:
    """A renamed route would lock the builder or gateway out: fail here, not in production."""
    routes = set(documented_routes(registry))
    for role, allowed in ALLOWED.items():
        assert allowed <= routes, (role, allowed - routes)
    assert set(ALLOWED) == set(ServiceRole)


async def test_a_service_account_is_never_an_admin(registry: Registry) -> None:
    both = await registry.client.post(
        "/v1/users", json={"name": "root-svc", "is_admin": True, "service_role": "gateway"}
    )
    assert_problem(both, 422, field="service_role")
    unknown = await registry.client.post(
        "/v1/users", json={"name": "root-svc", "service_role": "admin"}
    )
    assert_problem(unknown, 422, field="service_role")
    # Nothing was created under that name.
    assert (await registry.client.post("/v1/users", json={"name": "root-svc"})).status_code == 201
    with pytest.raises(ValueError, match="is not the builder service account"):
        await create_service_account(registry.settings, "root-svc", ServiceRole.BUILDER)


async def test_a_reissued_service_token_ends_the_earlier_one(registry: Registry) -> None:
    """A service's token file lost or deleted (perhaps because it leaked): the new token
    works and the old one no longer does."""
    await seeded(registry)
    first = await create_service_account(registry.settings, "builder", ServiceRole.BUILDER)
    second = await create_service_account(registry.settings, "builder", ServiceRole.BUILDER)
    assert first != second
    old = await registry.client.get(concrete(BUNDLE), headers=registry.as_user(first))
    assert old.status_code == 401, old.text
    assert "revoked" in old.json()["detail"]
    new = await registry.client.get(concrete(BUNDLE), headers=registry.as_user(second))
    assert new.status_code == 200, new.text


async def test_a_retired_admin_account_keeps_no_rights(registry: Registry) -> None:
    """The old ``platform`` account: admin, its token handed to two services."""
    await seeded(registry)
    old = await create_admin_user(registry.settings, "platform")
    as_old = registry.as_user(old)
    assert (await registry.client.get("/v1/projects", headers=as_old)).status_code == 200

    assert await retire_token_owner(registry.settings, old)
    assert_problem(await registry.client.get("/v1/projects", headers=as_old), 401)
    async with service_state(registry.app, RegistryState).database.sessions() as session:
        user = await accounts_service.get_user_by_name_or_raise(session=session, name="platform")
        assert user.is_admin is False
        assert all(
            t.revoked_at is not None
            for t in await accounts_service.list_tokens(session=session, user=user)
        )
    assert not await retire_token_owner(registry.settings, "mc_never-issued")


async def test_an_older_sqlite_database_upgrades_and_its_users_stay_people(
    tmp_path: Path,
) -> None:
    await check_upgrade_from_0001(RegistrySettings(data_dir=tmp_path))


@pytest.mark.postgres
async def test_an_older_postgres_database_upgrades_and_its_users_stay_people(
    tmp_path: Path, postgres_url: str
) -> None:
    await check_upgrade_from_0001(RegistrySettings(data_dir=tmp_path, database_url=postgres_url))


async def check_upgrade_from_0001(settings: RegistrySettings) -> None:
    engine = create_engine(settings.sqlalchemy_url())
    try:
        await upgrade(engine, MIGRATIONS, "0001")  # the schema before service accounts
        async with engine.begin() as connection:
            insert = sa.text(
                'INSERT INTO "user" (id, name, is_admin, created_at) '
                "VALUES (:id, 'ada', false, CURRENT_TIMESTAMP)"
            ).bindparams(sa.bindparam("id", type_=sa.Uuid()))
            await connection.execute(insert, {"id": uuid.uuid4()})
    finally:
        await engine.dispose()
    gateway = await create_service_account(settings, "gateway", ServiceRole.GATEWAY)  # migrates
    bus = LocalBus(settings.data_dir / "events.db")
    await bus.start()
    try:
        async with running_registry(settings, bus) as registry:
            ada = await registry.client.post("/v1/users/ada/tokens", json={"name": "laptop"})
            me = await registry.client.get("/v1/me", headers=registry.as_user(ada.json()["token"]))
            assert me.json()["service_role"] is None
            listing = await registry.client.get("/v1/projects", headers=registry.as_user(gateway))
            assert listing.status_code == 200, listing.text
            assert_problem(
                await registry.client.get("/v1/me", headers=registry.as_user(gateway)), 403
            )
    finally:
        await bus.close()
