"""What a build backend and a replica runtime do, whatever runs underneath.

A build backend turns an unpacked bundle and its spec into an artifact: a virtual
environment plus a code folder (venv), or an image (docker). Dependencies come first and
are cached by what they depend on, so a code-only change rebuilds in seconds.

A runtime starts replicas of an artifact and tells whether they still run. It is the seam
where a distributed engine (Docker Swarm services, Kubernetes Deployments) can take over
placement: the supervisor only asks it to start, stop and check replicas.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from modelcloud_proto.specs import BuildSpec, Device

LogLine = Callable[[str], None]


class StepFailed(Exception):
    """A build step (or a check before the steps) failed; ``step`` says which."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class BuildJob:
    build_id: UUID
    version_id: UUID
    spec: BuildSpec
    device: Device
    source: Path  # the unpacked, already checked bundle
    project: str = ""  # whose code it is: the venv runtime's sandbox user is the project's


@dataclass(frozen=True)
class Artifact:
    """What a replica is started from; ``data`` is the backend's own (paths, image id)."""

    backend: str
    data: dict[str, Any]
    reused_environment: bool = False

    def describe(self) -> str:
        return str(self.data.get("image") or self.data.get("code") or self.backend)


class BuildBackend(Protocol):
    name: str

    async def build(self, job: BuildJob, log: LogLine) -> Artifact:
        """Build, streaming output to ``log``; raises :class:`StepFailed`."""


@dataclass(frozen=True)
class ReplicaSpec:
    replica_id: UUID
    version_id: UUID
    artifact: Artifact
    host: str
    port: int
    concurrency: int
    gpu: bool
    log_path: Path
    environment: dict[str, str] = field(default_factory=dict)
    project: str = ""  # whose code it is: the venv runtime's sandbox user is the project's


class Runtime(Protocol):
    name: str

    async def start(self, replica: ReplicaSpec) -> str:
        """Start a replica; returns its handle (a pid, a container id)."""

    def alive(self, handle: str) -> bool:
        """Whether the replica's process or container still runs."""

    async def stop(self, handle: str, grace_s: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL after ``grace_s``); a gone replica is fine."""

    def output(self, handle: str, lines: int) -> str | None:
        """The replica's last output lines, where the runtime keeps them (else ``None``: the
        supervisor reads the replica's log file)."""

    def release(self) -> None:
        """Let go of the replicas without stopping them (the builder stops, they serve on)."""

    def running(self) -> dict[str, UUID]:
        """Everything this builder's runtime started that still runs, by handle: the
        replica ids, found on the machine itself (to sweep orphans after a crash)."""
