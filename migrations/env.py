"""Alembic environment. The URL comes from the caller (`ticketing.migrations`) or DATABASE_URL."""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError

from ticketing.domain import models
from ticketing.settings import get_settings, postgresql_url, problems

config = context.config
target_metadata = models.SQLModel.metadata

if config.config_file_name is not None:  # the alembic command; not `ticketing migrate`
    fileConfig(config.config_file_name)


def numbered(
    migration_context: MigrationContext, revision: object, directives: list[MigrationScript]
) -> None:
    """New revisions keep the numbered names (0001, 0002, ...): the next number after the
    highest, instead of a random id."""
    script = ScriptDirectory.from_config(config)
    numbers = [int(r.revision) for r in script.walk_revisions() if r.revision.isdigit()]
    for directive in directives:
        directive.rev_id = f"{max(numbers, default=0) + 1:04d}"


def database_url() -> str:
    """The URL, normalised as the service does; a bad one exits with one line, no traceback."""
    try:
        given = config.get_main_option("sqlalchemy.url")
        url = postgresql_url(given) if given else get_settings().database_url
    except ValidationError as error:
        raise SystemExit("\n".join(problems(error))) from None
    except ValueError as error:
        raise SystemExit(f"sqlalchemy.url: {error}") from None
    if not url:
        raise SystemExit("Set DATABASE_URL to the database to migrate.")
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        process_revision_directives=numbered,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            process_revision_directives=numbered,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(database_url(), poolclass=sa.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            process_revision_directives=numbered,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
