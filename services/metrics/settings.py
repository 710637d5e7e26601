"""Metrics service settings, from ``METRICS_*`` environment variables."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class MetricsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METRICS_", extra="ignore", frozen=True)

    service_name: str = "metrics"
    port: int = Field(default=8004, ge=0, le=65535)
    registry_url: str = Field(
        default="http://127.0.0.1:8001", description="where tokens are checked"
    )
    auth_cache_s: float = Field(default=5.0, ge=0, description="how long a token check is reused")
    max_points_per_call: int = Field(
        default=100_000, ge=1, description="metric points one request may carry"
    )
    max_request_bytes: int = Field(default=32 << 20, ge=1024)
    crashed_after_s: float = Field(
        default=300,
        gt=0,
        description="a running run that has sent nothing for this long is marked crashed",
    )
