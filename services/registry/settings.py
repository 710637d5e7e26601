"""Registry settings, from ``REGISTRY_*`` environment variables."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True)

    service_name: str = "registry"
    port: int = Field(default=8001, ge=0, le=65535)
    max_bundle_bytes: int = Field(default=256 << 20, ge=1024)
    # Model services get a port from this range unless they ask for one.
    service_port_min: int = Field(default=20000, ge=1024, le=65535)
    service_port_max: int = Field(default=29999, ge=1024, le=65535)
