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
    step_timeout_s: float = Field(default=1800, gt=0, description="the longest a build step runs")
    replica_host: str = Field(default="127.0.0.1", description="where replicas listen")
    health_timeout_s: float = Field(default=300, gt=0, description="setup's longest wait")
    health_interval_s: float = Field(default=2.0, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    stop_replicas_on_exit: bool = Field(
        default=False,
        description="stop replicas when the builder stops (else they keep serving and a "
        "restarted builder adopts them)",
    )
    gpus: int = Field(default=0, ge=0, description="GPUs replicas of gpu services may use")

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
