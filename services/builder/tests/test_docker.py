"""The Docker backend on a real engine: an image per version with dependency layers before
the code, containers as replicas, and the real example classifying a real photo."""

import docker
import pytest

from services.builder.tests.conftest import Platform, greeter
from services.builder.tests.test_builds import build
from services.builder.tests.test_deployments import greet, publish, wait_for
from services.builder.tests.test_example import build_publish_and_classify

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


async def test_an_image_builds_a_code_change_reuses_its_layers_and_serves(
    docker_platform: Platform,
) -> None:
    platform = docker_platform
    first = await build(platform, "1.0", greeter("hello"))
    assert first["state"] == "built", first["state_detail"]
    second = await build(platform, "1.1", greeter("bonjour"))
    assert second["state"] == "built", second["state_detail"]
    (new,) = await platform.builds("1.1")
    assert new["reused_environment"] is True  # no dependency step ran again

    online = await publish(platform, "1.1")
    assert online["state"] == "online", online["state_detail"]
    (replica,) = online["replicas"]
    assert await greet(replica["address"], "ada") == "bonjour, ada"

    client = docker.from_env()
    try:
        (container,) = client.containers.list(filters={"label": "io.modelcloud.replica"})
        container.kill()

        async def restarted() -> str | None:
            (deployment,) = await platform.deployments()
            back = [r for r in deployment["replicas"] if r["restarts"] == 1 and r["ready"]]
            return back[0]["address"] if back else None

        address = await wait_for(restarted, timeout=120)
        assert await greet(address, "grace") == "bonjour, grace"
        offline = await platform.registry.client.post(
            "/v1/projects/vision/services/greeter/versions/1.1/offline"
        )
        assert offline.status_code == 202

        async def no_containers() -> bool:
            return not client.containers.list(all=True, filters={"label": "io.modelcloud.replica"})

        await wait_for(no_containers, timeout=60)
    finally:
        client.close()


async def test_a_failing_step_in_an_image_build_names_it(docker_platform: Platform) -> None:
    step = "python -c \"print('boom'); raise SystemExit(3)\""
    failed = await build(
        docker_platform, "1.0", greeter(**{"modelcloud.yml": f"build_steps:\n  - {step}\n"})
    )
    assert failed["state"] == "build_failed"
    (record,) = await docker_platform.builds("1.0")
    assert record["failed_step"] == step
    assert "boom" in record["reason"]


@pytest.mark.model
async def test_the_example_image_classifies_a_photo(docker_platform: Platform) -> None:
    assert "cat" in await build_publish_and_classify(docker_platform)
