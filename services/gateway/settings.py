"""Gateway settings, from ``GATEWAY_*`` environment variables."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    service_name: str = "gateway"
    port: int = Field(default=8000, ge=0, le=65535)
    registry_url: str = "http://127.0.0.1:8001"
    builder_url: str = "http://127.0.0.1:8002"
    filestore_url: str = "http://127.0.0.1:8003"
    metrics_url: str = "http://127.0.0.1:8004"
    registry_token: SecretStr | None = Field(
        default=None, description="the gateway's own token, to read what is online at start"
    )
    replica_key: SecretStr | None = Field(
        default=None,
        description="the secret shared with the builder (BUILDER_REPLICA_KEY): each call and "
        "probe carries the key derived from it for the replica's version; unset, replicas "
        "are called without one",
    )
    auth_cache_s: float = Field(default=5.0, ge=0)
    call_timeout_s: float = Field(
        default=120,
        gt=0,
        description="the longest a model call runs, unless its service's performance notes "
        "declare their own timeout_s",
    )
    max_outstanding: int = Field(
        default=32, ge=1, description="calls in flight per replica before it counts as busy"
    )
    eject_s: float = Field(
        default=5.0, gt=0, description="how long a refusing replica rests per failed probe"
    )
    allowed_hosts: list[str] = Field(
        default=["localhost", "127.0.0.1", "::1"],
        description="names the gateway answers for in the Host header ('*.example.com' "
        "covers subdomains, '*' any name)",
    )
    probe_interval_s: float = Field(
        default=0.5, gt=0, description="how often resting replicas' /healthz is asked"
    )
    max_request_bytes: int = Field(default=64 << 20, ge=1024)
