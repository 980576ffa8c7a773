"""Settings of every ESS process, read from `ESS_*` environment variables.

Built in each service's `main()`, never at import, and validated there so that a wrong
setting stops the process at start with a readable message.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_BUS_SCHEMES = ("amqp://", "amqps://", "memory://")
_STORE_SCHEMES = ("s3://", "file://")
_DB_SCHEMES = ("postgresql+asyncpg://", "sqlite+aiosqlite://")


class EssSettings(BaseSettings):
    """What the head services and the edges share."""

    model_config = SettingsConfigDict(env_prefix="ESS_", extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///var/ess.db"
    bus_url: str = "memory://"
    exchange: str = "ess"
    store_url: str = "file://var/objects"
    s3_endpoint_url: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    #: Signs URLs for the local directory store; S3 signs its own.
    url_signing_key: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_hex(16)))
    signed_url_ttl_s: int = Field(default=600, ge=10, le=7 * 24 * 3600)
    head_url: str = "http://127.0.0.1:8000"
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    #: Deliveries of one message before it goes to its dead-letter queue.
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=1.0, ge=0.0)
    prefetch: int = Field(default=8, ge=1)

    @field_validator("bus_url")
    @classmethod
    def _bus_scheme(cls, value: str) -> str:
        if not value.startswith(_BUS_SCHEMES):
            raise ValueError(f"ESS_BUS_URL must start with one of {_BUS_SCHEMES}")
        return value

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if not value.startswith(_STORE_SCHEMES):
            raise ValueError(f"ESS_STORE_URL must start with one of {_STORE_SCHEMES}")
        return value

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, value: str) -> str:
        if not value.startswith(_DB_SCHEMES):
            raise ValueError(f"ESS_DATABASE_URL must start with one of {_DB_SCHEMES}")
        return value


class HeadSettings(EssSettings):
    """The head services: head API, broker, notifier."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: An edge whose last heartbeat is older than this is lost and its work moves.
    edge_lost_after_s: float = Field(default=30.0, gt=0)
    sweep_interval_s: float = Field(default=2.0, gt=0)
    panda_exchange: str = "panda"
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_max_attempts: int = Field(default=8, ge=1)


class EdgeSettings(EssSettings):
    """One edge: its name, its cache, its place on the grid."""

    edge_name: str = Field(default="edge-local", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    edge_site: str = "local"
    edge_region: str = "local"
    edge_cache_dir: Path = Path("var/cache")
    edge_quota_bytes: int = Field(default=50 * 1024**3, gt=0)
    edge_url: str | None = None
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    download_timeout_s: float = Field(default=600.0, gt=0)
