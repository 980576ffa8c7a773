"""Settings of every ESS process, read from `ESS_*` environment variables.

Built in each service's `main()`, never at import, and validated there so that a wrong
setting stops the process at start with a readable message.
"""

from __future__ import annotations

import re
import secrets
import shlex
import string
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_BUS_SCHEMES = ("amqp://", "amqps://", "memory://")
_STORE_SCHEMES = ("s3://", "file://")
_DB_SCHEMES = ("postgresql+asyncpg://", "sqlite+aiosqlite://")
# uproot's level ranges: zlib and lzma 1-9, lz4 1-12, zstd 1-22.
_SPLIT_COMPRESSION = re.compile(
    r"source|none|(zlib|lzma):[1-9]|lz4:([1-9]|1[0-2])|zstd:([1-9]|1[0-9]|2[0-2])"
)
# The same names ess_splitter.command substitutes; the splitter checks the template again.
_SPLIT_COMMAND_PLACEHOLDERS = frozenset(
    {"input", "output", "first_event", "last_event", "skip_events", "n_events"}
)


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
    #: A file whose event trees uproot cannot write back unchanged is delivered "whole" as
    #: one range, or "fail"s naming the tree, branch and type.
    split_unsplittable: Literal["whole", "fail"] = "whole"
    #: Objects besides the event trees that cannot be carried into the range files are left
    #: out and reported ("skip"), or make the file "unsplittable" (then split_unsplittable).
    split_uncarried: Literal["skip", "unsplittable"] = "skip"
    #: Compression of the range files: "source" (the input's), "none" or <algorithm>:<level>
    #: with algorithm zlib, lzma (levels 1-9), lz4 (1-12) or zstd (1-22).
    split_compression: str = "source"
    #: A command run per range instead of uproot, e.g. "skim {input} {output} {skip_events}
    #: {n_events}"; placeholders {input}, {output}, {first_event}, {last_event} (1-based),
    #: {skip_events}, {n_events}. Split like a shell would, never run through one.
    split_command: str | None = None
    split_command_timeout_s: float = Field(default=600.0, gt=0)

    @field_validator("split_compression")
    @classmethod
    def _split_compression(cls, value: str) -> str:
        normalised = value.strip().lower()
        if not _SPLIT_COMPRESSION.fullmatch(normalised):
            raise ValueError(
                f"ESS_SPLIT_COMPRESSION {value!r} must be 'source', 'none' or <algorithm>:<level>"
                " with zlib:1-9, lzma:1-9, lz4:1-12 or zstd:1-22"
            )
        return normalised

    @field_validator("split_command")
    @classmethod
    def _split_command(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            found = [
                (name, bool(spec or conversion))
                for argument in shlex.split(value)
                for _, name, spec, conversion in string.Formatter().parse(argument)
                if name is not None
            ]
        except ValueError as exc:
            raise ValueError(f"ESS_SPLIT_COMMAND {value!r} does not parse: {exc}") from exc
        unknown = {
            name
            for name, formatted in found
            if formatted or name not in _SPLIT_COMMAND_PLACEHOLDERS
        }
        if unknown:
            raise ValueError(
                f"ESS_SPLIT_COMMAND has unknown placeholders {sorted(unknown)}; known are "
                f"{sorted(_SPLIT_COMMAND_PLACEHOLDERS)} (write {{{{ and }}}} for literal braces)"
            )
        if not {"input", "output"} <= {name for name, _ in found}:
            raise ValueError("ESS_SPLIT_COMMAND must use both {input} and {output}")
        return value
