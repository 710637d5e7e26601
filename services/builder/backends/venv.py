"""The embedded default: a virtual environment per set of dependencies, replicas as
processes on this machine.

Build: the exact Python asked for (``python3.X`` on PATH, or ``BUILDER_PYTHONS``), a venv
keyed by what the dependencies depend on (Python, the SDK, ``requirements.txt``, the build
steps, the package-index settings), built once and reused by every version with the same
key, like a Docker dependency layer. Steps run in a folder holding only
``requirements.txt`` (as in the Docker backend, where code is copied after the steps), with
a shared pip download cache. The code is copied to a folder of its own per version.

Replicas: ``<venv>/bin/python cloud_model.py`` (the spec's entrypoint) in the code folder,
in a session of its own so it outlives a builder restart, with an environment built from
scratch: no platform setting or secret reaches model code.
"""

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

from services.builder.backends.base import (
    Artifact,
    BuildJob,
    LogLine,
    ReplicaSpec,
    StepFailed,
)
from services.builder.backends.processes import (
    all_pids,
    process_alive,
    process_environment,
    run_step,
)
from services.builder.backends.sdk import COMPLETE, Sdk, SdkWheels
from services.builder.builds.steps import StepRejected, prepare
from services.builder.settings import BuilderSettings

REPLICA_MARK = "MODELCLOUD_REPLICA_ID"
OWNER_MARK = "MODELCLOUD_REPLICA_OWNER"
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PYTHON_NAME = re.compile(r"^python(3\.\d+)$")


class VenvBuilder:
    name = "venv"

    def __init__(self, settings: BuilderSettings, root: Path) -> None:
        self.settings = settings
        cache = settings.cache_root()
        self.envs = cache / "envs"
        self.cache = cache / "pip"
        self.wheelhouse = cache / "wheelhouse"
        self.code = root / "code"
        self.sdk = SdkWheels(self.wheelhouse)
        self._locks: dict[str, asyncio.Lock] = {}
        self._probed: dict[str, str | None] = {}

    async def build(self, job: BuildJob, log: LogLine) -> Artifact:
        python = await asyncio.to_thread(self._python, job.spec.python)
        try:
            steps, command = prepare(job.spec, job.device, job.source)
        except StepRejected as exc:
            raise StepFailed(exc.step, str(exc)) from None
        sdk = await self.sdk(log)
        requirements = job.source / "requirements.txt"
        key = _digest(
            {
                "python": str(python),
                "sdk": sdk.digest,
                "requirements": requirements.read_text(errors="replace")
                if requirements.is_file()
                else None,
                "steps": [list(step.argv) for step in steps],
                "index": self._index_environment(),
            }
        )
        env = self.envs / key
        async with self._locks.setdefault(key, asyncio.Lock()):
            reused = (env / COMPLETE).is_file()
            if reused:
                log(f"dependencies unchanged: reusing the environment {key[:12]}")
            else:
                await self._create(env, python, sdk, steps, requirements, log)
        code = self.code / str(job.version_id)
        await asyncio.to_thread(_replace_tree, job.source, code)
        log(f"code copied to {code}")
        return Artifact(
            backend=self.name,
            data={"env": str(env), "code": str(code), "entrypoint": list(command)},
            reused_environment=reused,
        )

    async def _create(
        self,
        env: Path,
        python: Path,
        sdk: Sdk,
        steps: list[Any],
        requirements: Path,
        log: LogLine,
    ) -> None:
        # An earlier build of this key that stopped half-way leaves a folder: start afresh.
        await asyncio.to_thread(shutil.rmtree, env, ignore_errors=True)
        await asyncio.to_thread(self.envs.mkdir, parents=True, exist_ok=True)
        workdir = env / "build"
        variables = self._step_environment(env)
        timeout = self.settings.step_timeout_s
        await run_step(
            f"create a Python {self._version_of(python)} environment",
            [str(python), "-m", "venv", str(env)],
            cwd=self.envs,
            env=variables,
            log=log,
            timeout_s=timeout,
        )
        await asyncio.to_thread(_prepare_workdir, workdir, requirements)
        await run_step(
            "install the modelcloud SDK",
            ["python", "-m", "pip", "install", *sdk.install],
            cwd=workdir,
            env=variables,
            log=log,
            timeout_s=timeout,
        )
        for step in steps:
            await run_step(
                step.text, step.argv, cwd=workdir, env=variables, log=log, timeout_s=timeout
            )
        (env / COMPLETE).write_text("ok\n")

    # ------------------------------------------------------------------ inputs

    def _python(self, version: str) -> Path:
        """An interpreter that runs and says it is ``version`` (a pyenv shim for a version
        that is not installed is on PATH but does not run)."""
        configured = self.settings.pythons.get(version)
        candidates = [configured] if configured else self._on_path().get(version, [])
        for candidate in candidates:
            if self._probe(candidate) == version:
                return Path(candidate)
        have = sorted(
            {v for v, paths in self._on_path().items() if any(self._probe(p) == v for p in paths)}
            | set(self.settings.pythons),
            key=lambda v: [int(p) for p in v.split(".")],
        )
        raise StepFailed(
            f"python {version}",
            f"Python {version} is not on this builder; it has: {', '.join(have) or 'none'} "
            "(set BUILDER_PYTHONS, or ask for one of these in modelcloud.yml)",
        )

    @staticmethod
    def _on_path() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for folder in os.environ.get("PATH", _BASE_PATH).split(os.pathsep):
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                continue
            for name in names:
                if match := _PYTHON_NAME.match(name):
                    found.setdefault(match.group(1), []).append(os.path.join(folder, name))
        return found

    def _probe(self, python: str) -> str | None:
        if python not in self._probed:
            try:
                answer = subprocess.run(  # noqa: S603 - an interpreter found on PATH
                    [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=False,
                )
                self._probed[python] = answer.stdout.strip() if answer.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                self._probed[python] = None
        return self._probed[python]

    @staticmethod
    def _version_of(python: Path) -> str:
        match = _PYTHON_NAME.match(python.name)
        return match.group(1) if match else python.name

    def _index_environment(self) -> dict[str, str]:
        """pip's package-index settings: the builder's own ``PIP_*`` environment, then the
        ``BUILDER_*`` settings on top."""
        variables = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
        variables |= self.settings.pip_index()
        if self.settings.find_links:
            variables["PIP_FIND_LINKS"] = " ".join(self.settings.find_links)
        if self.settings.ca_bundle:
            variables["PIP_CERT"] = self.settings.ca_bundle
        return variables

    def _step_environment(self, env: Path) -> dict[str, str]:
        return {
            **self._index_environment(),
            "PATH": f"{env / 'bin'}:{_BASE_PATH}",
            "VIRTUAL_ENV": str(env),
            "HOME": str(env / "build"),
            "LANG": "C.UTF-8",
            "PIP_CACHE_DIR": str(self.cache),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }


def _prepare_workdir(workdir: Path, requirements: Path) -> None:
    workdir.mkdir()
    if requirements.is_file():
        shutil.copy2(requirements, workdir / "requirements.txt")


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _replace_tree(source: Path, target: Path) -> None:
    staging = target.with_name(f"{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, symlinks=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


# ----------------------------------------------------------------------------- runtime


# Replicas left running when a runtime is released (the builder stops, its replicas serve
# on): their handles stay referenced for the life of this process, which is what they are.
_RELEASED: list["subprocess.Popen[bytes]"] = []


class ProcessRuntime:
    """Replicas as processes of this machine, each in its own session."""

    name = "venv"

    def __init__(self, owner: str) -> None:
        # Marks the replicas of this builder (its data folder), to tell them apart from
        # another builder's on the same machine.
        self.owner = owner
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    async def start(self, replica: ReplicaSpec) -> str:
        data = replica.artifact.data
        env_bin = Path(data["env"]) / "bin"
        command = list(data["entrypoint"])
        if command[0] in ("python", "python3") or _PYTHON_NAME.match(command[0]):
            command[0] = str(env_bin / "python")
        variables = {
            "PATH": f"{env_bin}:{_BASE_PATH}",
            "VIRTUAL_ENV": str(Path(data["env"])),
            "HOME": str(data["code"]),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "MODELCLOUD_HOST": replica.host,
            "MODELCLOUD_PORT": str(replica.port),
            "MODELCLOUD_CONCURRENCY": str(replica.concurrency),
            "CUDA_VISIBLE_DEVICES": "0" if replica.gpu else "",
            REPLICA_MARK: str(replica.replica_id),
            OWNER_MARK: self.owner,
            **replica.environment,
        }
        process = _spawn(command, Path(data["code"]), variables, replica.log_path)
        self._children[process.pid] = process
        return str(process.pid)

    def alive(self, handle: str) -> bool:
        pid = int(handle)
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None  # also reaps it once it has exited
        return process_alive(pid) and self._is_ours(pid)

    async def stop(self, handle: str, grace_s: float = 10.0) -> None:
        pid = int(handle)
        if not self.alive(handle):
            self._children.pop(pid, None)
            return
        _signal_group(pid, signal.SIGTERM)
        if not await self._gone(handle, grace_s):
            _signal_group(pid, signal.SIGKILL)
            await self._gone(handle, 30.0)
        self._children.pop(pid, None)

    async def _gone(self, handle: str, within_s: float) -> bool:
        # A process exit is not an awaitable event for an adopted replica: poll.
        deadline = asyncio.get_running_loop().time() + within_s
        while self.alive(handle):
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def output(self, handle: str, lines: int) -> str | None:
        return None  # replicas write to their log file

    def release(self) -> None:
        """Let go of the replicas without stopping them (a restarted builder adopts them)."""
        _RELEASED.extend(self._children.values())
        self._children.clear()

    def running(self) -> dict[str, UUID]:
        found: dict[str, UUID] = {}
        for pid in all_pids():
            env = process_environment(pid)
            if env and env.get(OWNER_MARK) == self.owner and process_alive(pid):
                try:
                    found[str(pid)] = UUID(env[REPLICA_MARK])
                except (KeyError, ValueError):
                    continue
        return found

    def _is_ours(self, pid: int) -> bool:
        env = process_environment(pid)
        return env is not None and env.get(OWNER_MARK) == self.owner


def _spawn(
    command: list[str], cwd: Path, variables: dict[str, str], log_path: Path
) -> "subprocess.Popen[bytes]":
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - argv from a validated entrypoint
            command,
            cwd=cwd,
            env=variables,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
