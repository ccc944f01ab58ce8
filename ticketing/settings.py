"""The one settings object, read from the environment and an optional `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Only for local development: `ticketing serve` prints a demo token while it is in use.
DEVELOPMENT_JWT_SECRET = "ticketing-development-secret-change-me-0123456789"  # noqa: S105


class Settings(BaseSettings):
    """Every setting of the service. Names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(
        env_prefix="TICKETING_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Path(".ticketing")
    jwt_secret: SecretStr = SecretStr(DEVELOPMENT_JWT_SECRET)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    graphiql: bool = True
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_connect_timeout_s: int = Field(default=3, ge=1)
    db_statement_timeout_ms: int = Field(default=5000, ge=1)
    db_lock_timeout_ms: int = Field(default=2000, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
