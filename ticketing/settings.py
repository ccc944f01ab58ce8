"""The one settings object, read from the environment and an optional `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Only for local development: `ticketing serve` prints a demo token while it is in use.
DEVELOPMENT_JWT_SECRET = "ticketing-development-secret-change-me-0123456789"  # noqa: S105
MIN_JWT_SECRET_LENGTH = 32  # HS256 wants a key of at least 256 bits
DATABASE_URL_FORM = "postgresql://user:password@host:5432/database"


def postgresql_url(url: str) -> str:
    """`url` as the SQLAlchemy URL the service connects with: `postgresql://`, `postgres://`
    and `postgresql+psycopg2://` all mean psycopg2 (SQLAlchemy 2.1 would pick psycopg 3 for
    the first, and knows no `postgres`). ValueError with one line saying what to write
    otherwise; the message never repeats the URL, which may hold a password."""
    scheme, separator, rest = url.strip().partition("://")
    dialect, _, driver = scheme.lower().partition("+")
    if not separator or not dialect:
        raise ValueError(f"not a database URL; write {DATABASE_URL_FORM}")
    if dialect not in ("postgresql", "postgres"):
        raise ValueError(f"{dialect}:// is not PostgreSQL; write {DATABASE_URL_FORM}")
    if driver not in ("", "psycopg2"):
        raise ValueError(
            f"the driver {driver!r} is not the one the service runs on (psycopg2); write "
            f"{DATABASE_URL_FORM} (or postgresql+psycopg2://...)"
        )
    normalized = f"postgresql+psycopg2://{rest}"
    try:
        make_url(normalized)
    except (ArgumentError, ValueError):  # e.g. a port that isn't a number
        raise ValueError(f"not a valid database URL; write {DATABASE_URL_FORM}") from None
    return normalized


class Settings(BaseSettings):
    """Every setting of the service. Names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(
        env_prefix="TICKETING_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    env: Literal["development", "production"] = "development"
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    # The one connection per process that LISTENs for changes; it must reach PostgreSQL
    # directly (not through a transaction-pooling PgBouncer). Unset: DATABASE_URL.
    listen_database_url: str | None = None
    data_dir: Path = Path(".ticketing")
    jwt_secret: SecretStr = SecretStr(DEVELOPMENT_JWT_SECRET)
    # When set, tokens must carry this `iss` / `aud` (empty means unset).
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Tokens must carry `iat`, and live (exp - iat) at most this long.
    jwt_max_lifetime_s: int = Field(default=24 * 3600, ge=60)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    # Unset: on in development, off in production.
    graphiql: bool | None = None
    introspection: bool | None = None
    cors_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(default=100_000, ge=1024)
    # The request head, limited by `ticketing serve` (ticketing/server.py). httptools can't
    # parse a URL over 65535 bytes.
    max_url_bytes: int = Field(default=32_768, ge=1024, le=65_535)
    max_header_bytes: int = Field(default=16_384, ge=1024)
    max_headers: int = Field(default=100, ge=10)
    header_timeout_s: float = Field(default=10, gt=0)
    # How long an idle connection is kept open for its next request. Above the idle timeouts
    # of the load balancers in front (AWS ALB: 60 s by default), so that they, not the
    # server, close idle connections: a server closing one just as the balancer reuses it
    # costs a request (a 502). 75 s as nginx's keepalive_timeout, for the same reason.
    keepalive_timeout_s: int = Field(default=75, ge=1)
    # GraphQL requests one worker serves at once; more are answered 503 with Retry-After at
    # once instead of queueing without bound (each may hold a body of max_body_bytes).
    # Idle connections don't count: uvicorn's limit_concurrency counts them, so the idle
    # connections a load balancer keeps open would turn into 503s, plain text ones.
    max_concurrent_requests: int = Field(default=500, ge=1)
    # Open WebSocket connections per worker; more are closed at once with 1013 (try later).
    max_websocket_connections: int = Field(default=10_000, ge=1)
    # permessage-deflate, which browsers ask for: messages of a few hundred bytes gain little,
    # and each connection's compressor costs about 40 KiB and CPU for every message.
    websocket_compression: bool = False
    max_query_tokens: int = Field(default=2000, ge=100)
    max_query_depth: int = Field(default=15, ge=2)
    max_query_aliases: int = Field(default=30, ge=0)
    max_query_cost: int = Field(default=10_000, ge=100)
    # Work validation may spend checking that same-named fields merge (see api/limits.py).
    max_query_merge_checks: int = Field(default=10_000, ge=100)
    max_response_bytes: int = Field(default=4_000_000, ge=10_000)
    # Per worker and per pool: one for transactions, one for statements that commit alone.
    # No overflow by default: under sustained load an overflow connection is opened and closed
    # for nearly every request (a PostgreSQL backend forked each time), which cost the hot
    # sale about a fifth of its throughput.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    db_connect_timeout_s: int = Field(default=3, ge=1)
    db_statement_timeout_ms: int = Field(default=5000, ge=1)
    db_lock_timeout_ms: int = Field(default=1000, ge=1)
    # Every unit of database work, waiting for a connection included: beyond it the request
    # is answered SERVICE_UNAVAILABLE, even when the database doesn't answer at all.
    db_deadline_ms: int = Field(default=3000, ge=100)
    # A hot event's row serialises its reservations: more connections would only wait on it.
    db_connections_per_event: int = Field(default=4, ge=1)
    # The most new reservations of one event a worker decides in one statement: those that
    # arrive while one of that event runs go in the next (1: each alone).
    db_batch_size: int = Field(default=32, ge=1, le=1000)
    # Anonymous query answers are shared for this long (0: never); at most a second stale.
    answer_cache_ttl_ms: int = Field(default=500, ge=0, le=1000)
    answer_cache_entries: int = Field(default=1000, ge=1)
    idempotency_key_ttl_hours: float = Field(default=24, ge=24)
    idempotency_purge_interval_s: float = Field(default=3600, gt=0)
    # How often each process looks for holds that ran out: a hold is EXPIRED, and its tickets
    # back, within about this long of its `expiresAt` even on an event nobody touches.
    hold_sweep_interval_s: float = Field(default=0.25, gt=0, le=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # json: one JSON object per line, for log collectors; text reads better in a terminal.
    log_format: Literal["text", "json"] = "text"
    # /metrics wants `Authorization: Bearer <this>` when set; in production it is served only
    # when set (the metrics say how busy the service is and who refuses what).
    metrics_token: SecretStr | None = None

    @field_validator("database_url", "listen_database_url")
    @classmethod
    def _psycopg2_url(cls, value: str | None) -> str | None:
        return postgresql_url(value) if value else None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _lock_waits_end_before_the_deadline(self) -> Self:
        # Otherwise a reservation queued behind a hot event would get no time to wait in.
        if self.db_lock_timeout_ms >= self.db_deadline_ms:
            raise ValueError("TICKETING_DB_LOCK_TIMEOUT_MS must be below TICKETING_DB_DEADLINE_MS.")
        return self

    @model_validator(mode="after")
    def _production_needs_a_real_secret(self) -> Self:
        secret = self.jwt_secret.get_secret_value()
        if self.env == "production" and (
            secret == DEVELOPMENT_JWT_SECRET or len(secret) < MIN_JWT_SECRET_LENGTH
        ):
            raise ValueError(
                "In production TICKETING_JWT_SECRET must be set to a secret of your own, at "
                f"least {MIN_JWT_SECRET_LENGTH} characters long (e.g. `openssl rand -hex 32`)."
            )
        return self

    @property
    def graphiql_enabled(self) -> bool:
        return self.graphiql if self.graphiql is not None else self.env == "development"

    @property
    def metrics_served(self) -> bool:
        return self.metrics_token is not None or self.env == "development"

    @property
    def introspection_enabled(self) -> bool:
        if self.introspection is not None:
            return self.introspection
        return self.env == "development"


def problems(error: ValidationError) -> list[str]:
    """One line per invalid setting, named by its environment variable, without pydantic's
    prefixes or the value given (it may be a secret)."""
    return [
        f"{_variable(problem['loc'])}: {problem['msg'].removeprefix('Value error, ')}"
        for problem in error.errors()
    ]


def _variable(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    field = Settings.model_fields.get(str(loc[0]))
    if field is None:  # already the variable's name
        return str(loc[0])
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return f"{Settings.model_config['env_prefix']}{str(loc[0]).upper()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
