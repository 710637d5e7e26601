"""The registry's REST API on the embedded default (SQLite + the local bus)."""

import asyncio
from typing import Any

import pytest

from services.registry.tests.support import (
    Registry,
    example_bundle,
    make_service,
    tar_bundle,
    upload_version,
)

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


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/me"),
        ("GET", "/v1/projects"),
        ("POST", "/v1/projects"),
        ("GET", "/v1/projects/vision/services"),
        ("POST", "/v1/projects/vision/services/x/versions/1.0/publish"),
        ("GET", "/v1/tokens"),
    ],
)
async def test_every_route_needs_a_token(registry: Registry, method: str, path: str) -> None:
    response = await registry.client.request(method, path, headers={"Authorization": ""})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    bad = await registry.client.request(method, path, headers={"Authorization": "Bearer mc_nope"})
    assert_problem(bad, 401)


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


async def test_service_registration_errors(registry: Registry) -> None:
    first = await make_service(registry.client, port=23456)
    assert first["port"] == 23456
    client = registry.client
    taken_name = await client.post(
        "/v1/projects/vision/services", json={"name": "classifier", "group": "default"}
    )
    assert_problem(taken_name, 409)
    taken_port = await client.post(
        "/v1/projects/vision/services", json={"name": "x", "group": "default", "port": 23456}
    )
    assert "port 23456" in assert_problem(taken_port, 409)["detail"]
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
