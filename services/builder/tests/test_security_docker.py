"""Model code on the Docker runtime holds nothing of the platform's (issue 13): build steps
and replicas run as an unprivileged user with no capability and no engine socket, and a
package-index credential never reaches a build step nor an image's history."""

import json
from collections.abc import Callable
from typing import Any

import docker
import httpx
import pytest

from modelcloud_testing.deployments import build, log_of, publish
from modelcloud_testing.platforms import Platform, remove_test_images, running_builder
from modelcloud_testing.registries import Registry
from services.builder.backends.package_index import (
    IndexCredentials,
    credential_in,
    index_settings,
    redact,
)
from services.builder.settings import BuilderSettings
from services.builder.tests.test_docker import replicas_of

SECRET = "hunter2-index-secret"  # noqa: S105 - the fake credential looked for

PROBE = """
import json
import os
import modelcloud
from modelcloud.data_types import text


def writable(folder):
    try:
        with open(os.path.join(folder, ".probe"), "w") as file:
            file.write("x")
    except OSError:
        return False
    os.remove(os.path.join(folder, ".probe"))
    return True


@modelcloud.setup
def setup():
    return None


@modelcloud.command("probe", inputs={"name": text()}, outputs={"report": text()})
def probe(model, inputs):
    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines()
    )
    return {"report": json.dumps({
        "uid": os.getuid(),
        "cap_eff": status["CapEff"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "sockets": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
        "code_writable": writable("."),
        "root_writable": writable("/"),
        "tmp_writable": writable("/tmp"),
        "home_writable": writable(os.environ["HOME"]),
        "pip": sorted(k for k in os.environ if k.startswith("PIP_")),
    })}


if __name__ == "__main__":
    modelcloud.run()
"""

STEP_UID = "python -c \"import os; print('step uid', os.getuid(), 'env', sorted(os.environ))\""


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "url",
    [
        "https://s3cr3t-user:s3cr3t-pass@pypi.example/simple/",
        "https://s3cr3t-token@pypi.example/simple/",
        "https://:s3cr3t-token@pypi.example/simple/",
        "https://pypi.example/simple/?access_token=s3cr3t",
        "//s3cr3t-user:s3cr3t-pass@pypi.example/simple/",
    ],
)
def test_an_index_url_with_a_credential_is_refused_without_echoing_it(url: str) -> None:
    assert credential_in(url)
    with pytest.raises(IndexCredentials, match="BUILDER_EXTRA_INDEX_URLS holds a cred") as info:
        index_settings({"PIP_EXTRA_INDEX_URL": f"https://pypi.org/simple/ {url}"})
    assert "s3cr3t" not in str(info.value)


def test_only_the_allowlisted_pip_settings_pass_and_clean_ones_pass_unchanged() -> None:
    given = {
        "PIP_INDEX_URL": "https://pypi.org/simple/",
        "PIP_TRUSTED_HOST": "pypi.org",
        "PIP_FIND_LINKS": "/opt/wheels",
        "PIP_PROXY": "http://user:pass@proxy:3128",
        "PIP_CONFIG_FILE": "/root/.config/pip/pip.conf",
        "PIP_CLIENT_CERT": "/etc/secret.pem",
    }
    assert index_settings(given) == {
        "PIP_INDEX_URL": "https://pypi.org/simple/",
        "PIP_TRUSTED_HOST": "pypi.org",
        "PIP_FIND_LINKS": "/opt/wheels",
    }
    assert not credential_in("https://pypi.org/simple/")
    assert redact("https://u:p@host:8443/simple/?t=1") == "https://***@host:8443/simple/?***"
    with pytest.raises(IndexCredentials, match="BUILDER_TRUSTED_HOSTS"):
        index_settings({"PIP_TRUSTED_HOST": "user:pass@pypi.org"})


# ----------------------------------------------------------------------------- on Docker


def _history(client: docker.DockerClient, image: str) -> str:
    """What ``docker history --no-trunc`` shows of an image's layers."""
    return "\n".join(str(layer.get("CreatedBy", "")) for layer in client.api.history(image))


@pytest.mark.parametrize(
    "index",
    [
        {"index_url": f"https://modelcloud:{SECRET}@pypi.org/simple/"},
        {"extra_index_urls": [f"https://pypi.org/simple/?token={SECRET}"]},
    ],
)
@pytest.mark.docker
@pytest.mark.timeout(900)
async def test_a_credentialed_index_fails_the_build_and_makes_no_image(
    registry: Registry,
    builder_settings: Callable[..., BuilderSettings],
    docker_base_image: str,
    index: dict[str, Any],
) -> None:
    # Before: the URL became a build argument, and `docker history` of the built image
    # (and any build step running `env`) showed the password.
    settings = builder_settings(
        registry_token=registry.admin_token,
        backend="docker",
        docker_base_images={"3.11": docker_base_image},
        **index,
    )
    async with running_builder(settings, registry) as (app, client):
        platform = Platform(registry, app, client, settings)
        failed = await build(platform, "1.0", _probe_bundle())
        assert failed["state"] == "build_failed", failed["state_detail"]
        (record,) = await platform.builds("1.0")
        assert record["failed_step"] == "package index"
        assert "holds a credential" in record["reason"]
        assert "***@pypi.org" in record["reason"] or "?***" in record["reason"]
        assert SECRET not in json.dumps(record) + await log_of(platform, record["id"])
        engine = docker.from_env()
        try:
            images = engine.images.list(name=f"modelcloud/{failed['id']}")
            assert not images, "no image is built with a credentialed index"
        finally:
            engine.close()
    remove_test_images()


@pytest.mark.docker
@pytest.mark.timeout(900)
async def test_steps_and_replicas_run_unprivileged_and_the_history_holds_no_secret(
    docker_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = docker_platform
    # The builder's own environment may hold index credentials for its own pip: no build
    # takes them from there.
    monkeypatch.setenv("PIP_INDEX_URL", f"https://modelcloud:{SECRET}@pypi.org/simple/")
    built = await build(platform, "1.0", _probe_bundle())
    assert built["state"] == "built", built["state_detail"]
    (record,) = await platform.builds("1.0")
    log = await log_of(platform, record["id"])
    assert "step uid 10001 " in log, log  # before: "step uid 0", root in the build container
    assert SECRET not in log

    online = await publish(platform, "1.0")
    assert online["state"] == "online", online["state_detail"]
    (replica,) = online["replicas"]
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"http://{replica['address']}/probe", json={"name": "x"})
    assert answer.status_code == 200, answer.text
    report = json.loads(answer.json()["report"])
    assert report == {
        "uid": 10001,  # before: 0
        "cap_eff": "0000000000000000",  # before: Docker's default set (chown, kill, ...)
        "cap_bnd": "0000000000000000",
        "no_new_privs": "1",
        "sockets": [],
        "code_writable": False,  # the code is root's
        "root_writable": False,  # a read-only root filesystem ...
        "tmp_writable": True,  # ... with a tmpfs /tmp and home
        "home_writable": True,
        "pip": [],
    }

    engine = docker.from_env()
    try:
        (container,) = replicas_of(engine, platform)
        host = container.attrs["HostConfig"]
        assert host["PidsLimit"] == platform.settings.docker_pids_limit
        assert not container.attrs["Mounts"]  # no volume, no bind: no engine socket
        history = _history(engine, container.attrs["Config"]["Image"])
        assert SECRET not in history
        assert platform.settings.registry_token is not None
        assert platform.settings.registry_token.get_secret_value() not in history
    finally:
        engine.close()


def _probe_bundle() -> dict[str, str]:
    return {"cloud_model.py": PROBE, "modelcloud.yml": f"build_steps:\n  - {STEP_UID}\n"}
