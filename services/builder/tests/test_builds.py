"""Builds with the venv backend: a bundle becomes an environment, a code-only change reuses
it, and every kind of failure ends in a clear failed state naming its step."""

from typing import Any

import pytest

from services.builder.tests.conftest import SERVICE, Platform, greeter
from services.registry.tests.support import tar_bundle, upload_version

SLOW_TO_BUILD = pytest.mark.timeout(600)
FAILING_STEP = "python -c \"print('boom'); raise SystemExit(3)\""


async def build(platform: Platform, version: str, files: dict[str, str]) -> dict[str, Any]:
    uploaded = await upload_version(
        platform.registry.client,
        version,
        tar_bundle(dict[str, str | bytes](files)),
        service="greeter",
    )
    assert uploaded.status_code == 201, uploaded.text
    started = await platform.registry.client.post(f"{SERVICE}/versions/{version}/build")
    assert started.status_code == 202, started.text
    return await platform.wait_state(version, "built", "build_failed")


async def log_of(platform: Platform, build_id: str) -> str:
    answer = await platform.builder.get(f"/v1/projects/vision/builds/{build_id}/logs")
    assert answer.status_code == 200
    return answer.text


@SLOW_TO_BUILD
async def test_a_code_only_change_reuses_the_environment(platform: Platform) -> None:
    first = await build(platform, "1.0", greeter("hello"))
    assert first["state"] == "built", first["state_detail"]
    second = await build(platform, "1.1", greeter("good morning"))
    assert second["state"] == "built", second["state_detail"]
    (old,) = await platform.builds("1.0")
    (new,) = await platform.builds("1.1")
    assert new["state"] == "succeeded"
    assert new["reused_environment"] is True
    assert "reusing the environment" in await log_of(platform, new["id"])
    assert "build succeeded" in await log_of(platform, old["id"])


@SLOW_TO_BUILD
async def test_build_logs_stream_as_server_sent_events(platform: Platform) -> None:
    await build(platform, "1.0", greeter())
    (done,) = await platform.builds("1.0")
    streamed = await platform.builder.get(
        f"/v1/projects/vision/builds/{done['id']}/logs", params={"follow": "true"}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "data: build succeeded\n\n" in streamed.text
    assert streamed.text.endswith("event: end\ndata: succeeded\n\n")


@SLOW_TO_BUILD
@pytest.mark.parametrize(
    ("extra", "step", "shown"),
    [
        (
            {"modelcloud.yml": f"build_steps:\n  - {FAILING_STEP}\n"},
            FAILING_STEP,
            ["exit code 3", "boom"],
        ),
        (
            {"requirements.txt": "modelcloud-no-such-package-4242==1.0\n"},
            "pip install -r requirements.txt",
            ["modelcloud-no-such-package-4242"],
        ),
        (
            {"modelcloud.yml": "entrypoint: python serve.py\n"},
            "entrypoint",
            ["serve.py is not in the bundle"],
        ),
        (
            {"modelcloud.yml": "python: '3.9'\n"},
            "python 3.9",
            ["3.11"],
        ),
        (
            {"modelcloud.yml": "build_steps:\n  - pip install x && rm -rf /\n"},
            "modelcloud.yml",
            ["shell operators"],
        ),
    ],
    ids=["failing step", "missing requirement", "missing entrypoint", "missing python", "shell"],
)
async def test_a_failed_build_names_its_step_and_shows_its_output(
    platform: Platform, extra: dict[str, str], step: str, shown: list[str]
) -> None:
    failed = await build(platform, "1.0", greeter(**extra))
    assert failed["state"] == "build_failed"
    assert repr(step) in failed["state_detail"]
    (record,) = await platform.builds("1.0")
    assert record["state"] == "failed"
    assert record["failed_step"] == step
    for text in shown:
        assert text in record["reason"]
        assert text in await log_of(platform, record["id"])


async def test_builds_need_a_token_and_another_project_sees_nothing(platform: Platform) -> None:
    anonymous = await platform.builder.get(
        "/v1/projects/vision/builds", headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    token = await platform.registry.user_token("mallory")
    foreign = await platform.builder.get(
        "/v1/projects/vision/builds", headers={"Authorization": f"Bearer {token}"}
    )
    assert foreign.status_code == 404
