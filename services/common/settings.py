"""Settings every service shares; each service subclasses with its own prefix.

Nothing reads the environment at import: ``RegistrySettings()`` does, when an app or a
command builds it (``create_app(settings=None)`` builds one from the environment).
"""

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Credentials that ship with RabbitMQ and docs; refused outside development.
_KNOWN_DEFAULT_SECRETS = ("guest:guest@", "postgres:postgres@", "minioadmin")


class ServiceSettings(BaseSettings):
    """What any ModelCloud service is configured with."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str = "service"
    environment: Literal["dev", "prod"] = "dev"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path(".modelcloud")
    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in data_dir"
    )
    broker_url: SecretStr | None = Field(
        default=None, description="amqp:// URL; default: the local bus in data_dir"
    )
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    outbox_poll_interval_s: float = Field(default=0.5, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    max_request_bytes: int = Field(default=1 << 20, ge=1024)

    @model_validator(mode="after")
    def _no_default_secrets_outside_dev(self) -> Self:
        if self.environment == "prod":
            for url in (self.database_url, self.broker_url):
                if url is not None and any(
                    s in url.get_secret_value() for s in _KNOWN_DEFAULT_SECRETS
                ):
                    raise ValueError("a well-known default password is not allowed in prod")
        return self

    def sqlalchemy_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / f'{self.service_name}.db'}"

    def local_bus_path(self) -> Path:
        return self.data_dir.resolve() / "events.db"
