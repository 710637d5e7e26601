"""Model code cannot read the platform's secrets (issue 13, finding 1): build steps and
replicas of the venv runtime run sandboxed as their project's own uid, see none of the
platform's files, and get no platform setting or package-index credential.

Each attack here worked before the sandbox: a step ``cat <data>/admin.token`` printed the
token into the build log, model code read ``../../../platform.token``, an ``env`` step
printed every ``PIP_*`` variable of the builder."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from modelcloud_testing.deployments import build, log_of, publish
from modelcloud_testing.platforms import SERVICE, Platform, running_builder
from modelcloud_testing.polling import wait_for
from modelcloud_testing.registries import Registry
from services.builder.backends.package_index import IndexCredentials
from services.builder.backends.processes import all_pids, process_alive, process_environment
from services.builder.backends.sandbox import (
    ProjectUids,
    SandboxUnavailable,
    project_folder,
    sandbox_for,
)
from services.builder.backends.venv import OWNER_MARK, VenvBuilder
from services.builder.settings import BuilderSettings

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root"),
]

SECRET = "mc-admin-5f1d0c3e9a7b4e21"  # noqa: S105 - what a token file of the platform holds

PROBE = """
import json
import os

import modelcloud
from modelcloud.data_types import text


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(300).decode(errors="replace")
    except OSError as exc:
        return type(exc).__name__


def walk_up():
    # What a curious model finds above its working folder: every token file or database.
    found = {}
    folder = os.getcwd()
    while True:
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        for name in names:
            if name.endswith((".token", ".db")):
                found[os.path.join(folder, name)] = read(os.path.join(folder, name))
        if folder == "/":
            return found
        folder = os.path.dirname(folder)


@modelcloud.setup
def setup():
    targets = json.load(open("targets.json"))
    return {"uid": os.getuid(), "read": {t: read(t) for t in targets}, "walked": walk_up()}


@modelcloud.command("probe", inputs={"name": text()}, outputs={"message": text()})
def probe(model, inputs):
    return {"message": json.dumps(model)}


if __name__ == "__main__":
    modelcloud.run()
"""


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    """Token files where the embedded platform keeps them: in the data folder, above the
    builder's folder (``<data>/builder/code/<version>`` is a replica's working folder)."""
    files = {}
    for name in ("admin.token", "platform.token", "builder.token"):
        path = tmp_path / name
        path.write_text(SECRET + "\n")
        path.chmod(0o600)
        files[name] = path
    return files


def uid_of(project: str, settings: BuilderSettings) -> int:
    """The uid the builder recorded for ``project``."""
    recorded = json.loads((settings.cache_root() / "sandbox-uids.json").read_text())
    return int(recorded[project])


def steps(*lines: str) -> dict[str, str]:
    return {
        "cloud_model.py": "print('never run')\n",
        "modelcloud.yml": json.dumps({"build_steps": list(lines)}),
    }


async def test_a_build_step_cannot_read_the_platforms_files(
    platform: Platform, secrets: dict[str, Path], tmp_path: Path
) -> None:
    # One step tries both (a build whose step fails keeps no environment to reuse: each
    # such build costs a fresh one).
    paths = [tmp_path / "admin.token", tmp_path / "registry" / "registry.db"]
    assert all(path.is_file() for path in paths)  # the registry's database is there to try
    step = "cat " + " ".join(map(str, paths))
    finished = await build(platform, "1.0", steps(step))
    assert finished["state"] == "build_failed"
    (record,) = await platform.builds("1.0")
    assert record["failed_step"] == step
    log = await log_of(platform, record["id"])
    for path in paths:  # not even there: nothing is mounted
        assert f"cat: {path}: No such file or directory" in log, log
    assert SECRET not in log
    assert SECRET not in (record["reason"] or "")


async def test_an_env_step_shows_no_platform_secret_nor_index_credential(
    registry: Registry,
    builder_settings: Callable[..., BuilderSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the builder's own environment holds: its token, and pip settings that point at
    # secrets (a client key, a config file that may hold an index password).
    monkeypatch.setenv("BUILDER_REGISTRY_TOKEN", SECRET)
    monkeypatch.setenv("PIP_CLIENT_CERT", "/etc/modelcloud/index-client.pem")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/etc/modelcloud/pip-with-password.conf")
    settings = builder_settings(registry_token=registry.admin_token)
    async with running_builder(settings, registry) as (app, client):
        platform = Platform(registry, app, client, settings)
        finished = await build(platform, "1.0", steps("env", "id -u"))
        assert finished["state"] == "built", finished["state_detail"]
        (record,) = await platform.builds("1.0")
        log = await log_of(platform, record["id"])
    assert "PIP_CACHE_DIR=" in log  # env did print the environment
    assert SECRET not in log
    assert "index-client.pem" not in log
    assert "pip-with-password" not in log
    assert "BUILDER_" not in log
    printed = {line.split("=", 1)[0] for line in log.splitlines() if line.startswith("PIP_")}
    allowed = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"}
    allowed |= {"PIP_CERT", "PIP_NO_INDEX", "PIP_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
    assert printed <= allowed, printed
    assert f"\n{uid_of('vision', settings)}\n" in log  # id -u: the project's user, not root


async def test_a_replica_cannot_read_the_platforms_tokens(
    platform: Platform, secrets: dict[str, Path], tmp_path: Path
) -> None:
    targets = [
        "../../../platform.token",
        "../../../admin.token",
        str(secrets["admin.token"]),
        str(tmp_path / "registry" / "registry.db"),
        "/proc/1/environ",
    ]
    files = {"cloud_model.py": PROBE, "targets.json": json.dumps(targets)}
    assert (await build(platform, "1.0", files))["state"] == "built"
    online = await publish(platform, "1.0")
    assert online["state"] == "online", online["state_detail"]
    code = platform.settings.data_dir / "code" / online["id"]
    assert (code / "../../../platform.token").resolve() == secrets["platform.token"]

    address = online["replicas"][0]["address"]
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"http://{address}/probe", json={"name": "x"})
    assert answer.status_code == 200, answer.text
    seen = json.loads(answer.json()["message"])
    assert SECRET not in json.dumps(seen)
    assert seen["walked"] == {}  # no token file nor database anywhere above it
    for target in targets[:4]:
        assert seen["read"][target] == "FileNotFoundError", seen["read"]
    assert seen["uid"] == uid_of("vision", platform.settings) != 0

    # Offline stops everything in the sandbox, not only its first process.
    owner = platform.settings.replica_owner()
    assert len(marked_processes(owner)) >= 2  # the sandbox and the model server in it
    offline = await platform.registry.client.post(f"{SERVICE}/versions/1.0/offline")
    assert offline.status_code == 202

    async def none_left() -> bool:
        return not marked_processes(owner)

    await wait_for(none_left)


async def test_a_build_step_cannot_steer_what_the_builder_writes_or_mounts(
    platform: Platform, secrets: dict[str, Path], tmp_path: Path
) -> None:
    """The venv is the project's while its steps run: a link the builder would write
    through as root, a ``pyvenv.cfg`` naming the data folder for replicas to mount, write
    bits left for later replicas. None of them takes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    script = (
        "import os, pathlib; v = pathlib.Path(os.environ['VIRTUAL_ENV']); "
        f"os.symlink({str(victim)!r}, v / '.modelcloud-complete'); "
        f"(v / 'pyvenv.cfg').write_text('home = {tmp_path}\\n'); "
        "[os.chmod(f, 0o777) for f in v.rglob('*') if not f.is_symlink()]"
    )
    targets = [str(secrets["admin.token"])]
    files = {
        "cloud_model.py": PROBE,
        "targets.json": json.dumps(targets),
        "modelcloud.yml": json.dumps({"build_steps": [f'python -c "{script}"']}),
    }
    built = await build(platform, "1.0", files)
    assert built["state"] == "built", built["state_detail"]
    assert victim.read_text() == "untouched\n"
    online = await publish(platform, "1.0")
    assert online["state"] == "online", online["state_detail"]
    address = online["replicas"][0]["address"]
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"http://{address}/probe", json={"name": "x"})
    seen = json.loads(answer.json()["message"])
    assert seen["read"][targets[0]] == "FileNotFoundError", seen
    env = next((platform.settings.cache_root() / "envs").glob("*/pyvenv.cfg")).parent
    sealed = [f for f in env.rglob("*") if not f.is_symlink()]
    assert sealed
    assert not [f for f in sealed if f.lstat().st_mode & 0o022], "write bits left to others"


def test_a_replica_s_sandbox_outlives_the_builder_and_a_step_s_does_not(
    tmp_path: Path,
) -> None:
    """A restarted builder adopts the replicas it left (they serve on meanwhile); a build
    step ends with the builder that ran it."""
    sandbox = sandbox_for("bwrap", state=tmp_path / "state", uid_base=61000, uid_count=100)
    assert sandbox is not None
    starter = (
        "import subprocess as s, sys; print(s.Popen(sys.argv[1:], start_new_session=True, "
        "stdin=s.DEVNULL, stdout=s.DEVNULL, stderr=s.DEVNULL).pid)"
    )
    pids = {}
    for outlives in (True, False):
        command = sandbox.command(
            ["sleep", "120"], project="vision", cwd=Path("/"), outlives_builder=outlives
        )
        started = subprocess.run(
            [sys.executable, "-c", starter, *command], capture_output=True, text=True, check=True
        )
        pids[outlives] = int(started.stdout)  # its starter, the "builder", has exited
    try:

        async def step_gone() -> bool:
            return not process_alive(pids[False])

        asyncio.run(wait_for(step_gone, timeout=30))
        assert process_alive(pids[True])
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_hashed_project_folders_are_no_project_s_name() -> None:
    hashed = project_folder("VictimName")
    assert hashed != "VictimName"
    assert project_folder(hashed.replace(".", "-")) != hashed
    assert "." in hashed  # project names hold no dot: no project is called this


def marked_processes(owner: str) -> list[int]:
    """Every process carrying this builder's replica mark, at any depth."""
    return [
        pid
        for pid in all_pids()
        if (process_environment(pid) or {}).get(OWNER_MARK) == owner and process_alive(pid)
    ]


def test_each_project_gets_its_own_uid_and_keeps_it(tmp_path: Path) -> None:
    table = tmp_path / "sandbox-uids.json"
    first = ProjectUids(table, base=61000, count=100)
    vision, speech = first.of("vision"), first.of("speech")
    assert vision != speech
    assert {vision, speech} <= set(range(61000, 61100))
    again = ProjectUids(table, base=61000, count=100)  # a restarted builder
    assert (again.of("speech"), again.of("vision")) == (speech, vision)
    assert again.of("audio") not in (vision, speech)


def test_two_projects_steps_run_as_different_users_that_cannot_read_each_other(
    tmp_path: Path,
) -> None:
    sandbox = sandbox_for("bwrap", state=tmp_path / "state", uid_base=61000, uid_count=100)
    assert sandbox is not None
    secret_of_a = tmp_path / "a" / "secret.txt"
    secret_of_a.parent.mkdir()
    secret_of_a.write_text(SECRET)
    sandbox.own(secret_of_a.parent, "a")
    secret_of_a.chmod(0o600)

    def run(project: str, *argv: str) -> subprocess.CompletedProcess[str]:
        command = sandbox.command(
            argv, project=project, cwd=Path("/"), writable=[secret_of_a.parent]
        )
        return subprocess.run(command, capture_output=True, text=True, check=False)

    uid_a, uid_b = run("a", "id", "-u").stdout.strip(), run("b", "id", "-u").stdout.strip()
    assert uid_a != uid_b
    assert "0" not in (uid_a, uid_b)
    assert run("a", "cat", str(secret_of_a)).stdout == SECRET  # its own file
    denied = run("b", "cat", str(secret_of_a))
    assert denied.returncode != 0
    assert SECRET not in denied.stdout


def test_without_a_sandbox_the_builder_refuses_to_start(
    builder_settings: Callable[..., BuilderSettings],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    with pytest.raises(SandboxUnavailable, match="BUILDER_SANDBOX=none"):
        VenvBuilder(builder_settings(), tmp_path)
    monkeypatch.undo()
    VenvBuilder(builder_settings(sandbox="none"), tmp_path)  # said explicitly: it starts


def test_a_builder_that_is_not_root_still_hides_the_data_folder_from_model_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``modelcloud up`` on a laptop: no uids to give out, the mounts alone isolate."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").write_text(SECRET)
    code = tmp_path / "code"
    code.mkdir()
    (code / "weights.txt").write_text("weights")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    sandbox = sandbox_for("bwrap", state=tmp_path / "state", uid_base=61000, uid_count=100)
    assert sandbox is not None
    assert sandbox.unprivileged

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = sandbox.command(argv, project="vision", cwd=code, writable=[code])
        return subprocess.run(command, capture_output=True, text=True, check=False)

    assert run("cat", "weights.txt").stdout == "weights"  # its own code is there
    stolen = run("cat", str(data / "admin.token"))
    assert stolen.returncode != 0
    assert SECRET not in stolen.stdout
    assert "bwrap" in run("cat", "/proc/1/cmdline").stdout  # its own pids only


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUILDER_INDEX_URL", "https://ci:hunter2@pypi.example.com/simple/"),
        ("PIP_EXTRA_INDEX_URL", "https://__token__:hunter2@pypi.example.com/simple/"),
    ],
)
def test_an_index_credential_stops_the_builder_at_start(
    builder_settings: Callable[..., BuilderSettings],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(IndexCredentials, match="holds a credential") as refused:
        VenvBuilder(builder_settings(), tmp_path)
    assert "hunter2" not in str(refused.value)
