"""The embedded default: a virtual environment per set of dependencies, replicas as
processes on this machine.

Build: the exact Python asked for (``python3.X`` on PATH, or ``BUILDER_PYTHONS``), a venv
keyed by what the dependencies depend on (the project, Python, the SDK,
``requirements.txt``, the build steps, the package-index settings), built once and reused
by every version of the project with the same key, like a Docker dependency layer. (Not
across projects: a step can behave differently for another project, so a venv one project
built is never handed to another.) Steps run in a folder holding only ``requirements.txt``
(as in the Docker backend, where code is copied after the steps), with the project's own
pip download cache. The code is copied to a folder of its own per version.

Replicas: ``<venv>/bin/python cloud_model.py`` (the spec's entrypoint) in the code folder,
in a session of its own so it outlives a builder restart, with an environment built from
scratch: no platform setting or secret reaches model code.

Steps and replicas run in the sandbox of :mod:`~services.builder.backends.sandbox`, as the
project's own uid, seeing none of the platform's files. pip gets only the allowlisted
package-index settings of :mod:`~services.builder.backends.package_index` (the builder's
``BUILDER_*`` settings and ``PIP_*`` environment; a credential in any of them stops the
builder at start), as environment variables: a step can print them, so they hold none.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from services.builder.backends.base import (
    Artifact,
    BuildJob,
    LogLine,
    ReplicaSpec,
    StepFailed,
)
from services.builder.backends.package_index import index_settings
from services.builder.backends.processes import (
    Wrap,
    all_pids,
    process_alive,
    process_environment,
    process_status,
    run_step,
)
from services.builder.backends.sandbox import Sandbox, project_folder, sandbox_for
from services.builder.backends.sdk import COMPLETE, Sdk, SdkWheels
from services.builder.builds.steps import StepRejected, prepare
from services.builder.settings import BuilderSettings

log = logging.getLogger(__name__)
REPLICA_MARK = "MODELCLOUD_REPLICA_ID"
OWNER_MARK = "MODELCLOUD_REPLICA_OWNER"
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PYTHON_NAME = re.compile(r"^python(3\.\d+)$")
_PROBE = (
    "import json, os, sys; print(json.dumps(['%d.%d' % sys.version_info[:2], "
    "os.path.realpath(sys.executable), sys.base_prefix]))"
)


@dataclass(frozen=True)
class Interpreter:
    path: Path  # as found (a pyenv shim, say): what the venv's key names
    version: str
    executable: Path  # the interpreter itself, which runs in a sandbox where a shim cannot
    prefix: Path  # its installation, which a sandbox mounts read-only


def sandbox_of(settings: BuilderSettings) -> Sandbox | None:
    """The venv runtime's sandbox as the settings ask (raises ``SandboxUnavailable``)."""
    return sandbox_for(
        settings.sandbox,
        state=settings.cache_root(),
        uid_base=settings.sandbox_uid_base,
        uid_count=settings.sandbox_uid_count,
    )


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
        self._probed: dict[str, Interpreter | None] = {}
        # Both checked now, so that a builder that cannot keep model code away from the
        # platform's secrets, or would hand it a credential, does not start.
        self.sandbox = sandbox_of(settings)
        self.index = self._index_environment()

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
                "project": job.project,
                "python": str(python.path),
                "sdk": sdk.digest,
                "requirements": requirements.read_text(errors="replace")
                if requirements.is_file()
                else None,
                "steps": [list(step.argv) for step in steps],
                "index": self.index,
            }
        )
        env = self.envs / key
        # Beside the venv, not in it: the project's steps write the venv, and the builder
        # (root) must never write, or read, a path the project controls.
        complete = self.envs / f"{key}{COMPLETE}"
        async with self._locks.setdefault(key, asyncio.Lock()):
            reused = complete.is_file()
            if reused:
                log(f"dependencies unchanged: reusing the environment {key[:12]}")
            else:
                await asyncio.to_thread(complete.unlink, missing_ok=True)
                await self._create(env, python, sdk, steps, requirements, log, job.project)
                await asyncio.to_thread(complete.write_text, "ok\n")
        code = self.code / str(job.version_id)
        await asyncio.to_thread(_replace_tree, job.source, code)
        if self.sandbox is not None:  # the replica's working tree is its own
            await asyncio.to_thread(self.sandbox.own, code, job.project)
        log(f"code copied to {code}")
        return Artifact(
            backend=self.name,
            data={
                "env": str(env),
                "code": str(code),
                "entrypoint": list(command),
                # What a replica's sandbox mounts of the interpreter: the builder's own probe
                # of it, never what the venv (written by the project's steps) says.
                "python": [str(python.prefix), str(python.executable.parent)],
            },
            reused_environment=reused,
        )

    async def _create(
        self,
        env: Path,
        python: Interpreter,
        sdk: Sdk,
        steps: list[Any],
        requirements: Path,
        log: LogLine,
        project: str,
    ) -> None:
        # An earlier build of this key that stopped half-way leaves a folder: start afresh.
        await asyncio.to_thread(shutil.rmtree, env, ignore_errors=True)
        await asyncio.to_thread(env.mkdir, parents=True)
        workdir = env / "build"
        cache = self.cache / project_folder(project)
        variables = self._step_environment(env, cache)
        wrap = await asyncio.to_thread(self._sandboxed, project, env, python, cache)
        timeout = self.settings.step_timeout_s
        await run_step(
            f"create a Python {python.version} environment",
            [str(python.executable), "-m", "venv", str(env)],
            cwd=env,
            env=variables,
            log=log,
            timeout_s=timeout,
            wrap=wrap,
        )
        await asyncio.to_thread(_prepare_workdir, workdir, requirements)
        if self.sandbox is not None:
            await asyncio.to_thread(self.sandbox.own, workdir, project)
        await run_step(
            "install the modelcloud SDK",
            ["python", "-m", "pip", "install", *sdk.install],
            cwd=workdir,
            env=variables,
            log=log,
            timeout_s=timeout,
            wrap=wrap,
        )
        for step in steps:
            await run_step(
                step.text,
                step.argv,
                cwd=workdir,
                env=variables,
                log=log,
                timeout_s=timeout,
                wrap=wrap,
            )
        if self.sandbox is not None:  # done: from now on only read, by every version
            await asyncio.to_thread(self.sandbox.seal, env)

    def _sandboxed(self, project: str, env: Path, python: Interpreter, cache: Path) -> Wrap | None:
        """How the steps of ``project`` run: as its user, writing only the venv and its own
        pip cache, reading the interpreter's installation, the SDK wheels and local package
        folders the index settings name."""
        sandbox = self.sandbox
        if sandbox is None:
            cache.mkdir(parents=True, exist_ok=True)
            return None
        sandbox.own(env, project)
        sandbox.own_once(cache, project)
        read_only = [python.prefix, python.executable.parent, self.wheelhouse]
        read_only += _local_paths(self.index)

        def wrap(argv: Sequence[str], cwd: Path) -> list[str]:
            return sandbox.command(
                argv, project=project, cwd=cwd, read_only=read_only, writable=[env, cache]
            )

        return wrap

    # ------------------------------------------------------------------ inputs

    def _python(self, version: str) -> Interpreter:
        """An interpreter that runs and says it is ``version`` (a pyenv shim for a version
        that is not installed is on PATH but does not run)."""
        configured = self.settings.pythons.get(version)
        candidates = [configured] if configured else self._on_path().get(version, [])
        for candidate in candidates:
            found = self._probe(candidate)
            if found is not None and found.version == version:
                return found
        have = sorted(
            {
                v
                for v, paths in self._on_path().items()
                if any((found := self._probe(p)) and found.version == v for p in paths)
            }
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

    def _probe(self, python: str) -> Interpreter | None:
        if python not in self._probed:
            found = None
            try:
                answer = subprocess.run(  # noqa: S603 - an interpreter found on PATH
                    [python, "-c", _PROBE],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=False,
                )
                if answer.returncode == 0:
                    version, executable, prefix = json.loads(answer.stdout)
                    found = Interpreter(Path(python), version, Path(executable), Path(prefix))
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
            self._probed[python] = found
        return self._probed[python]

    def _index_environment(self) -> dict[str, str]:
        """pip's package-index settings, the allowlisted ones only: the builder's own
        ``PIP_*`` environment, then the ``BUILDER_*`` settings on top (raises
        ``IndexCredentials`` when one holds a credential)."""
        variables = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
        variables |= self.settings.pip_index()
        if self.settings.find_links:
            variables["PIP_FIND_LINKS"] = " ".join(self.settings.find_links)
        if self.settings.ca_bundle:
            variables["PIP_CERT"] = self.settings.ca_bundle
        return index_settings(variables)

    def _step_environment(self, env: Path, cache: Path) -> dict[str, str]:
        return {
            **self.index,
            "PATH": f"{env / 'bin'}:{_BASE_PATH}",
            "VIRTUAL_ENV": str(env),
            "HOME": str(env / "build"),
            "LANG": "C.UTF-8",
            "PIP_CACHE_DIR": str(cache),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }


def _local_paths(index: dict[str, str]) -> list[Path]:
    """The machine's folders and files pip is pointed at: local wheel folders, an index on
    disk (with its parent, where the pages link the files beside ``simple/``), a CA file."""
    found: list[Path] = []
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT"):
        for value in index.get(name, "").split():
            parts = urlsplit(value)
            if parts.scheme == "file":
                path = Path(unquote(parts.path))
            elif not parts.scheme and value.startswith("/"):
                path = Path(value)
            else:
                continue
            found.append(path.parent if path.name == "simple" else path)
    return found


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
    """Replicas as processes of this machine, each in its own session; sandboxed as the
    settings ask (without settings, as a bench builds it: not sandboxed)."""

    name = "venv"

    def __init__(self, owner: str, settings: BuilderSettings | None = None) -> None:
        # Marks the replicas of this builder (its data folder), to tell them apart from
        # another builder's on the same machine.
        self.owner = owner
        self.sandbox = sandbox_of(settings) if settings is not None else None
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
        code = Path(data["code"])
        if self.sandbox is not None:
            command = await asyncio.to_thread(self._sandboxed, self.sandbox, command, replica)
        process = _spawn(command, code, variables, replica.log_path)
        self._children[process.pid] = process
        return str(process.pid)

    def alive(self, handle: str) -> bool:
        pid = int(handle)
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None  # also reaps it once it has exited
        return process_alive(pid) and self._is_ours(pid)

    @staticmethod
    def _sandboxed(sandbox: Sandbox, command: list[str], replica: ReplicaSpec) -> list[str]:
        """The replica as its project's user: its code folder (its own, writable), its venv
        and the Python installation the venv points at (read-only), GPUs when it has one."""
        env, code = Path(replica.artifact.data["env"]), Path(replica.artifact.data["code"])
        # A code folder copied by a builder without the sandbox is root's: give it over.
        sandbox.own_once(code, replica.project)
        return sandbox.command(
            command,
            project=replica.project,
            cwd=code,
            read_only=[env, *_interpreter_mounts(replica.artifact.data, env)],
            writable=[code],
            devices=_gpu_devices() if replica.gpu else (),
            outlives_builder=True,
        )

    async def stop(self, handle: str, grace_s: float = 10.0) -> None:
        pid = int(handle)
        if not self.alive(handle):
            self._children.pop(pid, None)
            # Its first process (a sandbox's bwrap) may be gone with the model server still
            # running in its group, holding the port: nothing of it is left running.
            await self._sweep(pid)
            return
        _terminate(pid)
        if not await self._gone(handle, grace_s):
            _signal_group(pid, signal.SIGKILL)
            await self._gone(handle, 30.0)
        self._children.pop(pid, None)

    async def _sweep(self, group: int) -> None:
        """Kill what is left of a replica's process group (this builder's marked processes
        only), and wait until it is gone."""
        deadline = asyncio.get_running_loop().time() + 10.0
        while left := await asyncio.to_thread(self._left_in, group):
            for member in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signal.SIGKILL)
            if asyncio.get_running_loop().time() >= deadline:
                log.warning("replica processes %s outlived SIGKILL", left)
                return
            await asyncio.sleep(0.05)

    def _left_in(self, group: int) -> list[int]:
        return [
            member
            for member in all_pids()
            if (status := process_status(member)) is not None
            and status[2] == group
            and process_alive(member)
            and self._is_ours(member)
        ]

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
        marked: dict[int, dict[str, str]] = {}
        for pid in all_pids():
            env = process_environment(pid)
            if env and env.get(OWNER_MARK) == self.owner and process_alive(pid):
                marked[pid] = env
        found: dict[str, UUID] = {}
        for pid, env in marked.items():
            # A replica is the first marked process: the sandbox's processes and the model
            # server inside carry the marks too, under it.
            status = process_status(pid)
            if status is None or status[1] in marked:
                continue
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


def _interpreter_mounts(data: dict[str, Any], env: Path) -> list[Path]:
    """The interpreter's installation, as the build recorded it. An artifact built before
    builds recorded it (and before steps were sandboxed: its venv is root's) names it only
    in its ``pyvenv.cfg``, read as a small regular file and nothing else."""
    if "python" in data:
        return [Path(folder) for folder in data["python"]]
    config = env / "pyvenv.cfg"
    try:
        info = config.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_size > 64 << 10:
            return []
        lines = config.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == "home" and value.strip():
            home = Path(value.strip())
            return [home, home.parent]
    return []


def _gpu_devices() -> list[Path]:
    return sorted(Path("/dev").glob("nvidia*"))


def _terminate(pid: int) -> None:
    """SIGTERM to the replica's processes, all but a sandbox's own: the sandbox would go at
    once and take the model server with it (SIGKILL), leaving it no time to finish; it ends
    by itself when the server does."""
    members = [
        member
        for member in all_pids()
        if (status := process_status(member)) is not None
        and status[2] == pid
        and status[0] != "bwrap"
    ]
    if not members:  # no group, or only the sandbox (its server gone): the group's leader
        _signal_group(pid, signal.SIGTERM)
    for member in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGTERM)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
