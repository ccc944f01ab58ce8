"""Run Alembic migrations from code, and tell whether a database is at head."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries the migrations inside the package (see setup.py); a source
# checkout, installed editable or not at all, has them in the top-level migrations/ folder.
SCRIPTS = next(
    path for path in (PACKAGE / "alembic_scripts", PACKAGE.parent / "migrations") if path.is_dir()
)


def alembic_config(connection: Connection | None = None) -> Config:
    """The configuration `ticketing migrate` and the readiness check use: no alembic.ini (a
    wheel has none), so no logging set up by Alembic either."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


# The advisory lock that migrations take: any number, the same for every process.
MIGRATION_LOCK = 0x7469636B  # "tick"


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        _one_at_a_time(connection)
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    with engine.begin() as connection:
        _one_at_a_time(connection)
        command.downgrade(alembic_config(connection), revision)


def _one_at_a_time(connection: Connection) -> None:
    """Instances starting together each migrate first (`ticketing serve`): the first takes
    this lock and the others wait, then find the schema at head. A transaction's lock, as
    the whole migration is one transaction: it works through a transaction-pooling PgBouncer,
    where a session's lock would stay on a server connection that other clients get."""
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


def is_at_head(connection: Connection) -> bool:
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    return current == heads
