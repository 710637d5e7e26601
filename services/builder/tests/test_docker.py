"""The Docker backend on a real engine: an image per version with dependency layers before
the code, containers as replicas, and the real example classifying a real photo."""

import docker
import pytest
from docker.models.containers import Container

from modelcloud_testing.deployments import build, greet, log_of, publish
from modelcloud_testing.platforms import INDEX_URL, Platform, greeter
from modelcloud_testing.polling import wait_for
from services.builder.backends.docker import OWNER_LABEL
from services.builder.tests.test_example import build_publish_and_classify

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def replicas_of(
    client: docker.DockerClient, platform: Platform, *, stopped: bool = False
) -> list[Container]:
    """The test's own replica containers (other builders may share the engine)."""
    owner = f"{OWNER_LABEL}={platform.settings.replica_owner()}"
    found: list[Container] = client.containers.list(all=stopped, filters={"label": owner})
    return found


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
    (old,) = await platform.builds("1.0")
    # The package-index settings reached pip in the build ...
    assert f"Looking in indexes: {INDEX_URL}" in await log_of(platform, old["id"])

    online = await publish(platform, "1.1")
    assert online["state"] == "online", online["state_detail"]
    (replica,) = online["replicas"]
    assert await greet(replica["address"], "ada") == "bonjour, ada"

    client = docker.from_env()
    try:
        (container,) = replicas_of(client, platform)
        # ... and the replica does not see them (an index URL may hold credentials).
        environment = dict(v.split("=", 1) for v in container.attrs["Config"]["Env"])
        assert not [k for k in environment if k.startswith("PIP_")], environment
        assert INDEX_URL not in "".join(environment.values())
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
            return not replicas_of(client, platform, stopped=True)

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


async def test_a_model_whose_setup_raises_in_a_container_fails_to_publish(
    docker_platform: Platform,
) -> None:
    platform = docker_platform
    assert (await build(platform, "1.0", greeter(fail_setup="x")))["state"] == "built"
    failed = await publish(platform, "1.0")
    assert failed["state"] == "publish_failed"
    assert "the weights file is corrupt" in failed["state_detail"]  # the container's output
    client = docker.from_env()
    try:
        assert not replicas_of(client, platform, stopped=True)
    finally:
        client.close()


@pytest.mark.model
async def test_the_example_image_classifies_a_photo(docker_platform: Platform) -> None:
    assert "cat" in await build_publish_and_classify(docker_platform)
