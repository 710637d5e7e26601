"""The Docker backend: an image per version from a generated Dockerfile, replicas as
containers.

The Dockerfile puts the dependency layers (a venv with the SDK, ``requirements.txt``, the
build steps) before the code layer, so a code-only change rebuilds from Docker's layer
cache in seconds. Steps and the entrypoint are written in exec form (JSON arrays), never
as shell lines. The base image comes from ``BUILDER_DOCKER_BASE_IMAGES`` by Python (and
CUDA) version; an extra CA bundle and the package-index settings are passed into the build
for networks that inspect TLS; local wheel folders (``BUILDER_FIND_LINKS``) are copied in,
so that a CPU build of torch, say, is installed from them rather than fetched.

Model code is not trusted. The venv, the build steps and the replica run as an
unprivileged user of the image (uid 10001) that owns only the venv, the steps' folder and
its home; the code is root's and read-only to it. pip's settings are build arguments, not
``ENV`` (replicas never see them), and only the allowlist of ``package_index`` goes in:
``docker history`` shows every build argument and steps can print them, so a URL holding
a credential fails the build instead. Replicas run as that user with every capability
dropped, ``no-new-privileges``, a read-only root with a tmpfs ``/tmp`` and home, a pids
limit and optionally a memory cap, and no volume at all (so never the engine's socket).

Replicas run with a GPU request when the service wants a GPU, publish port 9000 on the
builder's replica host, and carry labels that let a restarted builder find them.

Every Docker SDK call blocks (an HTTP request to the engine, for minutes in an image
build), so none is made on the event loop: the async methods run them in a worker thread,
an image build's output coming back line by line as it is written, and the runtime's plain
methods (``alive``, ``output``, ``running``, ``release``) are called in one by the
supervisor.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest

from services.builder.backends.base import Artifact, BuildJob, LogLine, ReplicaSpec, StepFailed
from services.builder.backends.package_index import IndexCredentials, index_settings
from services.builder.backends.sdk import SdkWheels
from services.builder.builds.steps import StepRejected, prepare
from services.builder.settings import BuilderSettings

CONTAINER_PORT = 9000
OWNER_LABEL = "io.modelcloud.owner"
REPLICA_LABEL = "io.modelcloud.replica"
_STEP_LINE = re.compile(r"^Step \d+/\d+ : (.*)$")
_SDK_STEP = "install the modelcloud SDK"
# The image's user for the venv, the steps and the replica: not root, and above the uids
# a base image or the host usually hands out.
MODEL_UID = 10001
MODEL_HOME = "/home/model"
_ADD_USER = (
    f"useradd --uid {MODEL_UID} --user-group --no-log-init --create-home "
    f"--home-dir {MODEL_HOME} --shell /usr/sbin/nologin model"
).split()


def docker_client() -> docker.DockerClient:
    try:
        return docker.from_env(timeout=600)
    except DockerException as exc:
        raise StepFailed("docker", f"no Docker engine can be reached: {exc}") from None


class DockerBuilder:
    name = "docker"

    def __init__(self, settings: BuilderSettings) -> None:
        self.settings = settings
        self._sdk_wheels = SdkWheels(settings.cache_root() / "wheelhouse")

    async def build(self, job: BuildJob, log: LogLine) -> Artifact:
        try:
            buildargs = index_settings(self.settings.pip_index())
        except IndexCredentials as exc:
            raise StepFailed("package index", str(exc)) from None
        try:
            steps, command = prepare(job.spec, job.device, job.source)
        except StepRejected as exc:
            raise StepFailed(exc.step, str(exc)) from None
        base = self._base_image(job)
        client = await asyncio.to_thread(docker_client)
        # Closed whatever ends the build (a missing image, an engine error, the SDK's wheels).
        try:
            try:
                await asyncio.to_thread(client.images.get, base)
            except ImageNotFound:
                raise StepFailed(
                    "base image",
                    f"{base} is not on this Docker engine (build or load it there, or map "
                    f"Python {job.spec.python} to another image in BUILDER_DOCKER_BASE_IMAGES)",
                ) from None
            sdk = await self._sdk_wheels(log)
            repository = self.settings.docker_image_repository
            tag = f"{repository}/{job.version_id}:{str(job.build_id)[:8]}"
            loop = asyncio.get_running_loop()

            def emit(line: str) -> None:
                loop.call_soon_threadsafe(log, line)

            # The context holds copies of every wheel of BUILDER_FIND_LINKS (a CPU torch is
            # hundreds of MB): made and removed in a worker thread too.
            context = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="modelcloud-context-"))
            try:
                names = await asyncio.to_thread(
                    self._context, context, job, base, steps, command, sdk.wheels, list(buildargs)
                )
                image_id, reused = await asyncio.to_thread(
                    _build_image, client, context, tag, names, buildargs, emit
                )
                await asyncio.to_thread(_drop_older_images, client, tag)
            finally:
                await asyncio.to_thread(shutil.rmtree, context, ignore_errors=True)
        finally:
            await asyncio.to_thread(client.close)
        return Artifact(
            backend=self.name,
            data={"image": tag, "image_id": image_id},
            reused_environment=reused,
        )

    def _base_image(self, job: BuildJob) -> str:
        python, cuda = job.spec.python, job.spec.cuda
        key = f"{python}-cuda{cuda}" if cuda else python
        image = self.settings.docker_base_images.get(key)
        if image:
            return image
        if cuda:
            raise StepFailed(
                "base image",
                f"no base image for Python {python} with CUDA {cuda}: add {key!r} to "
                "BUILDER_DOCKER_BASE_IMAGES",
            )
        return f"python:{python}-slim"

    def _context(
        self,
        context: Path,
        job: BuildJob,
        base: str,
        steps: list[Any],
        command: tuple[str, ...],
        sdk_wheels: list[Path],
        index_arguments: list[str],
    ) -> dict[str, str]:
        """Write the build context; returns the Dockerfile instruction text of each named
        step, to tell which step a failure came from."""
        wheels = context / "wheels"
        wheels.mkdir()
        for wheel in sdk_wheels:
            shutil.copy2(wheel, wheels / wheel.name)
        for folder in self.settings.find_links:
            for wheel in Path(folder).glob("*.whl"):
                shutil.copy2(wheel, wheels / wheel.name)
        shutil.copytree(job.source, context / "code", symlinks=True)
        _readable_by_all(context / "code")
        has_requirements = (job.source / "requirements.txt").is_file()
        if has_requirements:
            shutil.copy2(job.source / "requirements.txt", context / "requirements.txt")
        # pip's settings are build arguments, not ENV: the build steps see them, the
        # image's environment (so every replica) does not. Their values come with the
        # build request, not in this file.
        lines = [
            f"FROM {base}",
            "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
            "ARG PIP_DISABLE_PIP_VERSION_CHECK=1",
        ]
        if self.settings.ca_bundle:
            shutil.copy2(self.settings.ca_bundle, context / "ca.crt")
            lines += [
                "COPY ca.crt /etc/modelcloud/ca.crt",
                # Model code reaching out through the same TLS-inspecting proxy needs it too.
                "ENV SSL_CERT_FILE=/etc/modelcloud/ca.crt "
                "REQUESTS_CA_BUNDLE=/etc/modelcloud/ca.crt",
                "ARG PIP_CERT=/etc/modelcloud/ca.crt",
            ]
        lines += [
            # The model's user owns the venv and the steps' folder, nothing else: what the
            # steps install and write stays apart from the base image and the code.
            _run(_ADD_USER),
            _run(["install", "-d", "-o", "model", "-g", "model", "/opt/model-env", "/opt/build"]),
            f"USER {MODEL_UID}:{MODEL_UID}",
            f"ENV HOME={MODEL_HOME}",
        ]
        lines += [f"ARG {key}" for key in index_arguments]
        lines += [
            _run(["python3", "-m", "venv", "/opt/model-env"]),
            "ENV PATH=/opt/model-env/bin:/usr/local/bin:/usr/bin:/bin VIRTUAL_ENV=/opt/model-env",
            "ARG PIP_FIND_LINKS=/opt/wheels",
            "COPY wheels/ /opt/wheels/",
            "WORKDIR /opt/build",
        ]
        if has_requirements:
            lines.append("COPY requirements.txt /opt/build/requirements.txt")
        names = {}
        sdk_run = _run(["python", "-m", "pip", "install", "modelcloud"])
        names[sdk_run] = _SDK_STEP
        lines.append(sdk_run)
        for step in steps:
            run = _run(list(step.argv))
            names[run] = step.text
            lines.append(run)
        lines += [
            # Copied files are root's whatever USER says: the code is read-only to the model.
            "WORKDIR /app",
            "COPY code/ /app/",
            f"ENV MODELCLOUD_HOST=0.0.0.0 MODELCLOUD_PORT={CONTAINER_PORT}",
            f"EXPOSE {CONTAINER_PORT}",
            f"CMD {json.dumps(list(command))}",
        ]
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        return names


def _run(argv: list[str]) -> str:
    return f"RUN {json.dumps(argv)}"


def _readable_by_all(folder: Path) -> None:
    """Give the copied code world-read modes (owner write, executables kept), since the
    image's user is not its owner: a bundle file of mode 0600 would otherwise be
    unreadable to the replica. Links are left as they are."""
    for root, folders, files in os.walk(folder):
        for name in folders:
            path = Path(root, name)
            if not path.is_symlink():
                path.chmod(0o755)
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                executable = path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
                path.chmod(0o755 if executable else 0o644)


def _build_image(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    names: dict[str, str],
    buildargs: dict[str, str],
    emit: Any,
) -> tuple[str, bool]:
    """Build, streaming the output; returns the image id and whether every dependency layer
    came from the cache."""
    current = "docker build"
    ran_a_step = False
    tail: list[str] = []
    for line in _stream(client, context, tag, buildargs):
        emit(line)
        tail = [*tail[-14:], line]
        if match := _STEP_LINE.match(line):
            current = names.get(match.group(1).strip(), match.group(1).strip())
        elif line.startswith(" ---> Running in") and current in names.values():
            ran_a_step = True
        elif line.startswith("ERROR: "):
            raise StepFailed(current, line.removeprefix("ERROR: ") + "\n" + "\n".join(tail))
    image = client.images.get(tag)
    return str(image.id), not ran_a_step


def _drop_older_images(client: docker.DockerClient, tag: str) -> None:
    """Earlier builds of the same version are superseded: untag them (layers still used by
    the new image or a running replica stay; the engine keeps what a container runs)."""
    repository = tag.rsplit(":", 1)[0]
    for image in client.images.list(name=repository):
        for old in image.tags:
            if old != tag:  # in use by a container: it goes with the container
                with contextlib.suppress(APIError):
                    client.images.remove(old, noprune=False)


def _stream(
    client: docker.DockerClient, context: Path, tag: str, buildargs: dict[str, str]
) -> Iterator[str]:
    # The engine sends a step's output as it is written, so one chunk may hold part of a
    # line (`print("a", "b")` arrives as four chunks): lines are joined before they go out.
    partial = ""
    try:
        for chunk in client.api.build(
            path=str(context), tag=tag, buildargs=buildargs, rm=True, forcerm=True, decode=True
        ):
            if "stream" in chunk and (text := partial + str(chunk["stream"])):
                *lines, partial = text.splitlines(keepends=True)
                if partial.endswith(("\n", "\r")):
                    lines, partial = [*lines, partial], ""
                yield from (line.rstrip() for line in lines if line.strip())
            elif "error" in chunk:
                if partial.strip():
                    yield partial.rstrip()
                partial = ""
                yield f"ERROR: {chunk['error']}"
    except (APIError, DockerException) as exc:
        yield f"ERROR: {exc}"
    if partial.strip():
        yield partial.rstrip()


# ----------------------------------------------------------------------------- runtime


class ContainerRuntime:
    """Replicas as containers of the local Docker engine."""

    name = "docker"

    def __init__(self, owner: str, settings: BuilderSettings) -> None:
        self.owner = owner
        self.settings = settings
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()  # worker threads may ask for it at once

    @property
    def client(self) -> docker.DockerClient:
        """The engine's client, connected on first use: call it in a worker thread."""
        with self._client_lock:
            if self._client is None:
                self._client = docker_client()
            return self._client

    async def start(self, replica: ReplicaSpec) -> str:
        def run() -> Container:
            requests = [DeviceRequest(count=1, capabilities=[["gpu"]])] if replica.gpu else []
            memory = self.settings.docker_memory_mb
            scratch = f"rw,nosuid,nodev,size={self.settings.docker_scratch_mb}m"
            return self.client.containers.run(
                replica.artifact.data["image"],
                detach=True,
                name=f"modelcloud-{replica.replica_id}",
                labels={OWNER_LABEL: self.owner, REPLICA_LABEL: str(replica.replica_id)},
                environment={
                    "MODELCLOUD_CONCURRENCY": str(replica.concurrency),
                    "HOME": MODEL_HOME,
                    **replica.environment,
                },
                ports={f"{CONTAINER_PORT}/tcp": (replica.host, replica.port)},
                device_requests=requests,
                # Named here, not only in the image, so that an image built by an older
                # builder (as root) runs unprivileged too.
                user=f"{MODEL_UID}:{MODEL_UID}",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                tmpfs={
                    "/tmp": scratch,  # noqa: S108 - the container's own tmpfs
                    MODEL_HOME: f"{scratch},uid={MODEL_UID},gid={MODEL_UID},mode=0700",
                },
                pids_limit=self.settings.docker_pids_limit,
                mem_limit=f"{memory}m" if memory else None,
                # No volumes: nothing of the host, the engine's socket least of all.
            )

        container = await asyncio.to_thread(run)
        return str(container.id)

    def alive(self, handle: str) -> bool:
        try:
            container = self.client.containers.get(handle)
        except NotFound:
            return False
        return bool(container.status == "running")

    def output(self, handle: str, lines: int) -> str | None:
        try:
            raw = self.client.containers.get(handle).logs(tail=lines)
        except NotFound:
            return None
        return bytes(raw).decode(errors="replace")

    async def stop(self, handle: str, grace_s: float = 10.0) -> None:
        def stop_and_remove() -> None:
            try:
                container = self.client.containers.get(handle)
            except NotFound:
                return
            try:
                container.stop(timeout=int(grace_s))
            finally:
                container.remove(force=True)

        await asyncio.to_thread(stop_and_remove)

    def release(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def running(self) -> dict[str, UUID]:
        found: dict[str, UUID] = {}
        for container in self.client.containers.list(
            all=True, filters={"label": f"{OWNER_LABEL}={self.owner}"}
        ):
            if container.status != "running":
                container.remove(force=True)
                continue
            try:
                found[str(container.id)] = UUID(container.labels[REPLICA_LABEL])
            except (KeyError, ValueError):
                continue
        return found
