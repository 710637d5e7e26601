"""The registry's REST API on the embedded default (SQLite + the local bus)."""

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from modelcloud_testing.registries import (
    Registry,
    example_bundle,
    make_service,
    tar_bundle,
    upload_version,
)
from services.registry.accounts import service as accounts_service

PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert "Traceback" not in response.text
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


# ----------------------------------------------------------------------------- auth


# Every path parameter of the API, with a value that exists in `seeded` below.
PATH_VALUES = {
    "project": "vision",
    "name": "classifier",
    "version": "1.0",
    "member": "bob",
    "alias": "production",
    "token_id": "00000000-0000-4000-8000-000000000000",
}
PUBLIC = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]


def documented_routes(registry: Registry) -> list[tuple[str, str]]:
    """(METHOD, path template) for every operation in the registry's OpenAPI document."""
    doc = registry.app.openapi()
    return [(method.upper(), path) for path, ops in doc["paths"].items() for method in ops]


def concrete(template: str) -> str:
    return template.format(**PATH_VALUES)


async def seeded(registry: Registry) -> None:
    """Project, group, service, version and alias, so a 401 is never a 404 in disguise."""
    await make_service(registry.client)
    assert (await upload_version(registry.client)).status_code == 201
    alias = await registry.client.put(
        "/v1/projects/vision/services/classifier/aliases/production", json={"version": "1.0"}
    )
    assert alias.status_code == 200, alias.text


async def test_every_route_but_health_metrics_and_docs_needs_a_token(registry: Registry) -> None:
    await seeded(registry)
    routes = documented_routes(registry)
    assert len(routes) >= 20  # the whole API, not an empty document
    before = (await registry.client.get("/v1/projects/vision/services")).json()
    for method, template in routes:
        path = concrete(template)
        for authorization in ("", "Bearer mc_not-a-real-token", "Basic YWRtaW46YWRtaW4="):
            response = await registry.client.request(
                method, path, headers={"Authorization": authorization}
            )
            assert response.status_code == 401, (method, path, authorization, response.text)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
    assert (await registry.client.get("/v1/projects/vision/services")).json() == before
    for path in PUBLIC:
        public = await registry.client.get(path, headers={"Authorization": ""})
        assert public.status_code == 200, (path, public.text)


async def test_health_metrics_and_openapi_are_public(registry: Registry) -> None:
    anonymous = {"Authorization": ""}
    assert (await registry.client.get("/healthz", headers=anonymous)).json() == {"status": "ok"}
    assert (await registry.client.get("/readyz", headers=anonymous)).json() == {"status": "ready"}
    metrics = await registry.client.get("/metrics", headers=anonymous)
    assert "http_requests_total" in metrics.text
    doc = (await registry.client.get("/openapi.json", headers=anonymous)).json()
    assert "/v1/projects/{project}/services/{name}/versions" in doc["paths"]


async def test_revoked_token_stops_working(registry: Registry) -> None:
    token = await registry.user_token("ada")
    me = await registry.client.get("/v1/me", headers=registry.as_user(token))
    assert me.json()["name"] == "ada"
    tokens = await registry.client.get("/v1/tokens", headers=registry.as_user(token))
    token_id = tokens.json()[0]["id"]
    assert "token" not in tokens.json()[0]  # the secret is never shown again
    await registry.client.delete(f"/v1/tokens/{token_id}", headers=registry.as_user(token))
    again = await registry.client.get("/v1/me", headers=registry.as_user(token))
    assert assert_problem(again, 401)["detail"] == "the token was revoked"


@pytest.fixture
def registry_logs(registry: Registry) -> Iterator[io.StringIO]:
    """What the registry writes to its log, through the formatter its lifespan set up."""
    root = logging.getLogger()
    (configured,) = root.handlers
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(configured.formatter)
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


async def test_issued_tokens_never_reach_the_logs(
    registry: Registry, registry_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada_token = await registry.user_token("ada")  # issued by an admin for ada
    ada = registry.as_user(ada_token)
    laptop = await registry.client.post("/v1/tokens", json={"name": "laptop"}, headers=ada)
    laptop_token = laptop.json()["token"]
    assert (await registry.client.get("/v1/me", headers=registry.as_user(laptop_token))).is_success
    token_id = laptop.json()["id"]
    await registry.client.delete(f"/v1/tokens/{token_id}", headers=ada)
    revoked = await registry.client.get("/v1/me", headers=registry.as_user(laptop_token))
    assert_problem(revoked, 401)

    # A failure right after a token was made, with the secret in the exception's text:
    # the traceback is logged, the secret is not.
    issue = accounts_service.issue_token

    async def issue_then_fail(**kwargs: Any) -> Any:
        issued = await issue(**kwargs)
        raise RuntimeError(f"could not store the token {issued.token}")

    monkeypatch.setattr(accounts_service, "issue_token", issue_then_fail)
    with pytest.raises(RuntimeError) as failed:
        await registry.client.post("/v1/tokens", json={"name": "doomed"}, headers=ada)
    doomed_token = str(failed.value).rsplit(" ", 1)[1]
    assert doomed_token.startswith("mc_")

    logged = registry_logs.getvalue()
    assert '"path": "/v1/tokens"' in logged  # the requests were logged...
    assert "RuntimeError: could not store the token mc_" in logged  # ...and the failure
    for token in (registry.admin_token, ada_token, laptop_token, doomed_token):
        assert token not in logged


async def test_another_projects_data_answers_404_and_roles_are_enforced(registry: Registry) -> None:
    await make_service(registry.client)
    token = await registry.user_token("bob")
    bob = registry.as_user(token)
    assert_problem(await registry.client.get("/v1/projects/vision", headers=bob), 404)
    assert_problem(await registry.client.get("/v1/projects/vision/services", headers=bob), 404)
    assert (await registry.client.get("/v1/projects", headers=bob)).json() == []

    await registry.client.put("/v1/projects/vision/members/bob", json={"role": "read"})
    services = await registry.client.get("/v1/projects/vision/services", headers=bob)
    assert [s["name"] for s in services.json()] == ["classifier"]
    write = await registry.client.post(
        "/v1/projects/vision/services", json={"name": "other", "group": "default"}, headers=bob
    )
    assert_problem(write, 403)


# What a user with no role in `vision` sends to each of its routes: valid requests that
# the project's own members could make, so only the access rule can refuse them.
OUTSIDER_REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/projects/{project}"): {},
    ("PATCH", "/v1/projects/{project}"): {"json": {"description": "bob was here"}},
    ("GET", "/v1/projects/{project}/members"): {},
    ("PUT", "/v1/projects/{project}/members/{member}"): {"json": {"role": "admin"}},
    ("GET", "/v1/projects/{project}/groups"): {},
    ("POST", "/v1/projects/{project}/groups"): {"json": {"name": "bobs"}},
    ("GET", "/v1/projects/{project}/services"): {},
    ("POST", "/v1/projects/{project}/services"): {"json": {"name": "bobs", "group": "default"}},
    ("GET", "/v1/projects/{project}/services/{name}"): {},
    ("PATCH", "/v1/projects/{project}/services/{name}"): {"json": {"tagline": "bob was here"}},
    ("GET", "/v1/projects/{project}/services/{name}/versions"): {},
    ("POST", "/v1/projects/{project}/services/{name}/versions"): {
        "data": {"version": "2.0"},
        "files": {"bundle": ("code.tar.gz", example_bundle())},
    },
    ("GET", "/v1/projects/{project}/services/{name}/versions/{version}"): {},
    ("GET", "/v1/projects/{project}/services/{name}/versions/{version}/bundle"): {},
    ("POST", "/v1/projects/{project}/services/{name}/versions/{version}/build"): {},
    ("POST", "/v1/projects/{project}/services/{name}/versions/{version}/publish"): {
        "json": {"replicas": 1}
    },
    ("POST", "/v1/projects/{project}/services/{name}/versions/{version}/offline"): {},
    ("PUT", "/v1/projects/{project}/services/{name}/aliases/{alias}"): {"json": {"version": "1.0"}},
}


async def project_snapshot(registry: Registry) -> dict[str, Any]:
    """Everything about `vision` an admin can read, and the bundles stored."""
    client = registry.client
    base = "/v1/projects/vision"
    return {
        path: (await client.get(base + path)).json()
        for path in (
            "",
            "/members",
            "/groups",
            "/services",
            "/services/classifier/versions",
        )
    } | {"bundles": sorted(p.name for p in (registry.settings.data_dir / "bundles").rglob("*"))}


async def test_another_projects_data_answers_404_on_every_route(registry: Registry) -> None:
    await seeded(registry)
    bob = registry.as_user(await registry.user_token("bob"))
    under_project = {r for r in documented_routes(registry) if "{project}" in r[1]}
    assert set(OUTSIDER_REQUESTS) == under_project  # a new route gets a line above
    before = await project_snapshot(registry)

    for (method, template), request in OUTSIDER_REQUESTS.items():
        response = await registry.client.request(method, concrete(template), headers=bob, **request)
        body = assert_problem(response, 404)
        # Word for word what a project that does not exist answers: nothing tells them apart.
        assert body["detail"] == "no project 'vision'", (method, template, body)
        missing = await registry.client.request(
            method, concrete(template).replace("vision", "nope", 1), headers=bob, **request
        )
        assert assert_problem(missing, 404)["detail"] == "no project 'nope'"

    assert await project_snapshot(registry) == before
    assert (await registry.client.get("/v1/projects", headers=bob)).json() == []


# ----------------------------------------------------------------------------- projects, services


async def test_register_project_group_and_service_with_metadata(registry: Registry) -> None:
    service = await make_service(
        registry.client,
        tagline="Tell what is in a photo",
        description="# EfficientNet\n\nMarkdown **description**.",
        gallery=["https://example.com/thumb.png", "https://example.com/2.png"],
        license="Apache-2.0",
        performance={"device": "gpu", "memory": "512Mi", "latency_ms": 45, "notes": "fast"},
        links={"code": "https://github.com/x/y", "paper": "https://arxiv.org/abs/1905.11946"},
    )
    assert service["thumbnail"] == "https://example.com/thumb.png"
    assert service["performance"]["device"] == "gpu"
    assert 20000 <= service["port"] <= 29999
    second = await make_service(registry.client, service="second")
    assert second["port"] != service["port"]
    listed = await registry.client.get("/v1/projects/vision/services")
    assert [s["name"] for s in listed.json()] == ["classifier", "second"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "ok", "description": "x" * 20_001}, "description"),
        ({"name": "ok", "type": ""}, "type"),
    ],
)
async def test_bad_project_input_names_the_field(
    registry: Registry, body: dict[str, Any], field: str
) -> None:
    assert_problem(await registry.client.post("/v1/projects", json=body), 422, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": " leading"}, "name"),
        ({"name": "ok", "description": "x" * 20_001}, "description"),
        ({"name": "ok", "tagline": "x" * 201}, "tagline"),
        ({"name": "ok", "gallery": ["not a url"]}, "gallery.0"),
    ],
)
async def test_bad_service_input_names_the_field_and_registers_nothing(
    registry: Registry, body: dict[str, Any], field: str
) -> None:
    await make_service(registry.client)
    response = await registry.client.post(
        "/v1/projects/vision/services", json={"group": "default", **body}
    )
    problem = assert_problem(response, 422, field)
    assert field in problem["detail"]
    listed = await registry.client.get("/v1/projects/vision/services")
    assert [s["name"] for s in listed.json()] == ["classifier"]


async def test_oversize_description_in_a_service_update_is_refused(registry: Registry) -> None:
    await make_service(registry.client, description="short")
    path = "/v1/projects/vision/services/classifier"
    response = await registry.client.patch(path, json={"description": "x" * 20_001})
    assert_problem(response, 422, "description")
    assert (await registry.client.get(path)).json()["description"] == "short"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/projects/nope/services"),
        ("GET", "/v1/projects/nope/services"),
        ("GET", "/v1/projects/nope/services/classifier/versions"),
        ("POST", "/v1/projects/nope/groups"),
    ],
)
async def test_an_unknown_project_is_named_in_the_404(
    registry: Registry, method: str, path: str
) -> None:
    await make_service(registry.client)
    body = {"name": "x", "group": "default"} if method == "POST" else None
    response = await registry.client.request(method, path, json=body)
    assert assert_problem(response, 404)["detail"] == "no project 'nope'"


async def test_service_registration_errors(registry: Registry) -> None:
    port = registry.settings.service_port_min + 56  # in this test process's share
    first = await make_service(registry.client, port=port)
    assert first["port"] == port
    client = registry.client
    taken_name = await client.post(
        "/v1/projects/vision/services", json={"name": "classifier", "group": "default"}
    )
    assert_problem(taken_name, 409)
    taken_port = await client.post(
        "/v1/projects/vision/services", json={"name": "x", "group": "default", "port": port}
    )
    assert f"port {port}" in assert_problem(taken_port, 409)["detail"]
    no_group = await client.post(
        "/v1/projects/vision/services", json={"name": "x", "group": "nope"}
    )
    assert_problem(no_group, 422, "group")
    bad_device = await client.post(
        "/v1/projects/vision/services",
        json={"name": "x", "group": "default", "performance": {"device": "tpu"}},
    )
    assert_problem(bad_device, 422, "performance.device")
    unknown_project = await client.post(
        "/v1/projects/nope/services", json={"name": "x", "group": "default"}
    )
    assert_problem(unknown_project, 404)


async def test_concurrent_registrations_of_one_name_give_one_winner(registry: Registry) -> None:
    await make_service(registry.client, service="first")
    body = {"name": "twin", "group": "default"}
    responses = await asyncio.gather(
        *(registry.client.post("/v1/projects/vision/services", json=body) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [201, 409]
    assert "exists already" in next(r for r in responses if r.status_code == 409).json()["detail"]


# ----------------------------------------------------------------------------- versions


async def test_version_upload_reads_interface_and_build_spec_without_running_code(
    registry: Registry,
) -> None:
    await make_service(registry.client)
    response = await upload_version(registry.client)
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["state"] == "registered"
    commands = {c["name"]: c for c in version["interface"]["commands"]}
    assert set(commands) == {"classify", "classify_top"}
    assert commands["classify"]["inputs"][0]["type"] == "image"
    assert version["build_spec"]["entrypoint"] == "python cloud_model.py"
    assert version["build_spec"]["concurrency"] == 4
    assert version["bundle_size"] == len(example_bundle())
    stored = list((registry.settings.data_dir / "bundles").rglob("*.tar"))
    assert [p.stem for p in stored] == [version["bundle_sha256"]]


@pytest.mark.parametrize(
    ("version", "bundle", "field"),
    [
        ("1_0", None, "version"),
        ("1.0", tar_bundle({"../evil.py": "x", "cloud_model.py": "x"}), "bundle"),
        ("1.0", tar_bundle({"/etc/cron.d/x": "x", "cloud_model.py": "x"}), "bundle"),
        ("1.0", tar_bundle({"README.md": "no model here"}), "bundle"),
        ("1.0", b"this is not a tar archive", "bundle"),
        ("1.0", tar_bundle({"cloud_model.py": "def broken(:\n"}), "bundle"),
        (
            "1.0",
            tar_bundle({"cloud_model.py": "x = 1\n", "modelcloud.yml": "python: 3.10\n"}),
            "bundle.modelcloud.yml.python",
        ),
    ],
)
async def test_bad_versions_and_bundles_are_rejected_whole(
    registry: Registry, version: str, bundle: bytes | None, field: str
) -> None:
    await make_service(registry.client)
    response = await upload_version(registry.client, version=version, bundle=bundle)
    assert_problem(response, 422, field)
    assert not list((registry.settings.data_dir / "bundles").rglob("*.tar"))
    versions = await registry.client.get("/v1/projects/vision/services/classifier/versions")
    assert versions.json() == []


async def test_a_bundle_with_a_link_pointing_outside_is_rejected(registry: Registry) -> None:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        data = b"import modelcloud\n"
        info = tarfile.TarInfo("cloud_model.py")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("models/weights.pth")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../etc/shadow"
        tf.addfile(link)
    await make_service(registry.client)
    assert_problem(await upload_version(registry.client, bundle=buffer.getvalue()), 422, "bundle")


async def test_duplicate_version_is_a_conflict(registry: Registry) -> None:
    await make_service(registry.client)
    assert (await upload_version(registry.client)).status_code == 201
    assert_problem(await upload_version(registry.client), 409)
