"""Migrations build the schema the models describe, both ways, on an empty database."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.conftest import Databases
from ticketing import migrations
from ticketing.db import create_db_engine
from ticketing.domain.models import SQLModel


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_downgrade_upgrade_and_no_drift(databases: Databases) -> None:
    engine = create_db_engine(databases.create())
    try:
        assert tables(engine) == set()
        migrations.upgrade(engine)
        assert tables(engine) >= {"event", "reservation", "reservation_change"}
        migrations.downgrade(engine)
        assert tables(engine) == {"alembic_version"}
        migrations.upgrade(engine)
        with engine.connect() as connection:
            assert migrations.is_at_head(connection)
            diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
        assert diff == []
        with engine.connect() as connection:
            # Demo data is not a migration: a migrated database is empty.
            assert connection.scalar(sa.text("SELECT count(*) FROM event")) == 0
    finally:
        engine.dispose()


def test_a_database_behind_head_is_reported(databases: Databases) -> None:
    engine = create_db_engine(databases.create())
    try:
        with engine.connect() as connection:
            assert not migrations.is_at_head(connection)
    finally:
        engine.dispose()
