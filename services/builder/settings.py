"""Builder settings, from ``BUILDER_*`` environment variables."""

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class BuilderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BUILDER_", extra="ignore", frozen=True)

    service_name: str = "builder"
    port: int = Field(default=8002, ge=0, le=65535)
    backend: Literal["venv", "docker"] = "venv"
    registry_url: str = Field(
        default="http://127.0.0.1:8001", description="where bundles are fetched, tokens checked"
    )
    registry_token: SecretStr | None = Field(
        default=None, description="the builder's own registry token, to fetch code bundles"
    )
    auth_cache_s: float = Field(default=5.0, ge=0)
    cache_dir: Path | None = Field(
        default=None,
        description="built environments, SDK wheels and pip's download cache, shared by "
        "every build (default: data_dir/cache); safe to share between builders",
    )
    pythons: dict[str, str] = Field(
        default_factory=dict,
        description='interpreters by version, e.g. {"3.11": "/usr/bin/python3.11"}; '
        "otherwise python3.X is looked up on PATH",
    )
    # Package index settings handed to every build (enterprise proxies need them).
    index_url: str | None = None
    extra_index_urls: list[str] = Field(default_factory=list)
    find_links: list[str] = Field(
        default_factory=list, description="local wheel folders pip may install from"
    )
    trusted_hosts: list[str] = Field(default_factory=list)
    ca_bundle: str | None = Field(default=None, description="extra CA bundle for pip (PEM)")
    docker_base_images: dict[str, str] = Field(
        default_factory=dict,
        description='base images by Python version, or "3.11-cuda12.4" for a CUDA build; '
        "python:X.Y-slim when a CPU version is not listed",
    )
    docker_image_repository: str = Field(
        default="modelcloud",
        max_length=200,
        # Docker's reference grammar: an optional registry host[:port], then lowercase path
        # components joined by "/" (what `docker tag` accepts before the version id).
        pattern=r"^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$",
        description="images are tagged <repository>/<version id>:<build>; a registry "
        "namespace (registry.example.com/modelcloud) for a cluster that pulls them",
    )
    step_timeout_s: float = Field(default=1800, gt=0, description="the longest a build step runs")
    replica_host: str = Field(
        default="127.0.0.1",
        description="where replicas listen: this machine only, by default; an address the "
        "gateway reaches when it runs on another host",
    )
    replica_key: SecretStr | None = Field(
        default=None,
        description="the secret shared with the gateway (GATEWAY_REPLICA_KEY): each replica "
        "gets the key derived from it for its version and answers only callers sending that "
        "key; unset, replicas answer anyone who reaches their port",
    )
    health_timeout_s: float = Field(default=300, gt=0, description="setup's longest wait")
    health_interval_s: float = Field(default=2.0, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    stop_replicas_on_exit: bool = Field(
        default=False,
        description="stop replicas when the builder stops (else they keep serving and a "
        "restarted builder adopts them)",
    )
    gpus: int = Field(default=0, ge=0, description="GPUs replicas of gpu services may use")
    # The venv runtime's sandbox (services/builder/backends/sandbox.py).
    sandbox: Literal["bwrap", "none"] = Field(
        default="bwrap",
        description="how build steps and replicas of the venv runtime are isolated: bwrap "
        "(needs root and bubblewrap; the builder refuses to start without them), or none "
        "(model code runs as the builder's user and can read the platform's tokens)",
    )
    sandbox_uid_base: int = Field(
        default=61000, ge=1000, description="the first uid (and gid) handed to a project"
    )
    sandbox_uid_count: int = Field(
        default=4000, ge=1, description="how many uids from the base projects may get"
    )
    # Replica containers (Docker runtime): a read-only root with two small writable tmpfs.
    docker_memory_mb: int | None = Field(
        default=None, gt=0, description="memory cap of a replica container (none by default)"
    )
    docker_pids_limit: int = Field(
        default=4096, gt=0, description="most processes and threads a replica container runs"
    )
    docker_scratch_mb: int = Field(
        default=2048, gt=0, description="size of a replica container's /tmp and of its home"
    )

    def cache_root(self) -> Path:
        return (self.cache_dir or self.data_dir / "cache").resolve()

    def pip_index(self) -> dict[str, str]:
        """The package-index settings as pip's environment variables (both backends)."""
        variables = {}
        if self.index_url:
            variables["PIP_INDEX_URL"] = self.index_url
        if self.extra_index_urls:
            variables["PIP_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)
        if self.trusted_hosts:
            variables["PIP_TRUSTED_HOST"] = " ".join(self.trusted_hosts)
        return variables

    def replica_owner(self) -> str:
        """Marks this builder's replicas (by its data folder), to tell them from another
        builder's on the same machine."""
        return hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
