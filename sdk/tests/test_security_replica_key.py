"""Issue 13, finding 4: a model server started by the platform answers only callers that send
its replica key (the gateway), whoever else on the host reaches its port; run by hand, it
answers anyone as before."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from modelcloud import Model
from modelcloud._files import FilePolicy
from modelcloud._runtime import ModelRuntime
from modelcloud._server import create_app
from modelcloud._settings import ServerSettings, SettingsError
from modelcloud.client import ModelClient
from modelcloud.data_types import text
from modelcloud_proto.replica_keys import REPLICA_KEY_HEADER, REPLICA_KEY_VARIABLE

PROBLEM = "application/problem+json"
KEY = "5f0c1d-the-replica-key"


def configurable_model() -> Model:
    model = Model()

    @model.setup(options={"greeting": text(default="hello")})
    def setup(options):
        return options["greeting"]

    @model.command("greet", inputs={"name": text()}, outputs={"message": text()})
    def greet(greeting, inputs):
        return {"message": f"{greeting}, {inputs['name']}"}

    return model


def keyed_client(tmp_path: Path, replica_key: str | None) -> httpx.AsyncClient:
    runtime = ModelRuntime(configurable_model(), FilePolicy(roots=(tmp_path,)))
    runtime.setup({})
    app = create_app(runtime, max_body_bytes=1 << 20, replica_key=replica_key)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model")


def assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert REPLICA_KEY_HEADER in answer.json()["detail"]
    assert KEY not in answer.text


async def test_without_the_key_nothing_but_healthz_answers(tmp_path: Path) -> None:
    async with keyed_client(tmp_path, KEY) as client:
        assert_refused(await client.post("/greet", json={"name": "ada"}))
        assert_refused(await client.get("/meta"))
        assert_refused(await client.get("/openapi.json"))
        wrong = {REPLICA_KEY_HEADER: KEY[:-1] + "x"}
        assert_refused(await client.post("/greet", json={"name": "ada"}, headers=wrong))
        # Someone else on the host reconfiguring the model: refused, options unchanged.
        assert_refused(await client.post("/setup", json={"greeting": "pwned"}))
        # Refused before the body is read: a declared 1 TB body is not a 413 but a 401.
        huge = {"content-length": str(1 << 40), "content-type": "application/json"}
        assert_refused(await client.post("/greet", content=b"{}", headers=huge))

        health = await client.get("/healthz")  # the builder's checks carry no key
        assert health.status_code == 200
        assert health.json() == {"status": "ready"}

        key = {REPLICA_KEY_HEADER: KEY}
        called = await client.post("/greet", json={"name": "ada"}, headers=key)
        assert called.status_code == 200, called.text
        assert called.json() == {"message": "hello, ada"}
        assert (await client.get("/meta", headers=key)).status_code == 200


async def test_without_a_key_set_the_server_answers_anyone(tmp_path: Path) -> None:
    async with keyed_client(tmp_path, None) as client:
        called = await client.post("/greet", json={"name": "ada"})
        assert called.json() == {"message": "hello, ada"}


def test_the_key_comes_from_the_environment_and_never_shows() -> None:
    settings = ServerSettings().with_env({REPLICA_KEY_VARIABLE: KEY})
    assert settings.replica_key == KEY
    assert KEY not in repr(settings)
    assert ServerSettings().with_env({}).replica_key is None
    with pytest.raises(SettingsError, match=REPLICA_KEY_VARIABLE):
        ServerSettings().with_env({REPLICA_KEY_VARIABLE: " "})  # never read as "no key"


SCRIPT = textwrap.dedent(
    """
    import os
    import modelcloud
    from modelcloud.data_types import text

    @modelcloud.command("env", inputs={"name": text()}, outputs={"key": text()})
    def env(model, inputs):
        return {"key": os.environ.get(inputs["name"], "(unset)")}

    if __name__ == "__main__":
        modelcloud.run()
    """
)


def test_a_server_run_with_the_key_refuses_direct_calls(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "cloud_model.py").write_text(SCRIPT)
    env = {"MODELCLOUD_HOST": "127.0.0.1", "MODELCLOUD_PORT": str(port), REPLICA_KEY_VARIABLE: KEY}
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(  # as the builder starts a replica
        [sys.executable, "cloud_model.py"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with ModelClient(url) as client:
            client.wait_ready(timeout=30)  # /healthz: open
        body = {"name": REPLICA_KEY_VARIABLE}
        assert_refused(httpx.post(f"{url}/env", json=body))
        called = httpx.post(f"{url}/env", json=body, headers={REPLICA_KEY_HEADER: KEY})
        assert called.status_code == 200, called.text
        # Read once at start: the model's code (and what it starts) does not inherit it.
        assert called.json() == {"key": "(unset)"}
    finally:
        process.terminate()
        process.wait(timeout=30)
