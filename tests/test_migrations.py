"""Migrations build the schema the models describe, both ways, on an empty database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.helpers import Databases
from ticketing import migrations
from ticketing.db import create_db_engine
from ticketing.domain.models import SQLModel

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns("__pycache__")


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
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, SQLModel.metadata) == []
        # Autogenerate can't see CHECK constraints or partial-index conditions, which carry
        # the booking invariants: compare them with a database built from the models.
        from_models = create_db_engine(databases.create())
        try:
            SQLModel.metadata.create_all(from_models)
            assert catalog(engine) == catalog(from_models)
        finally:
            from_models.dispose()
        with engine.connect() as connection:
            # Demo data is not a migration: a migrated database is empty.
            assert connection.scalar(sa.text("SELECT count(*) FROM event")) == 0
    finally:
        engine.dispose()


def catalog(engine: sa.Engine) -> dict[str, set[tuple[str, ...]]]:
    """The constraints and indexes of the public schema, as PostgreSQL spells them."""
    with engine.connect() as connection:
        constraints = connection.execute(
            sa.text(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
                " AND conrelid::regclass::text <> 'alembic_version'"
            )
        )
        indexes = connection.execute(
            sa.text(
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        )
        return {
            "constraints": {tuple(row) for row in constraints},
            "indexes": {tuple(row) for row in indexes},
        }


def test_a_database_behind_head_is_reported(databases: Databases) -> None:
    engine = create_db_engine(databases.create())
    try:
        with engine.connect() as connection:
            assert not migrations.is_at_head(connection)
    finally:
        engine.dispose()


def test_owners_and_history_roles_are_backfilled(databases: Databases) -> None:
    """Events made before owners existed go to the placeholder organizer; each history line
    gets the role its actor had (the reservation's customer, or else an organizer)."""
    engine = create_db_engine(databases.create())
    try:
        migrations.upgrade(engine, "0003")
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO event (name, venue, starts_at, capacity, tickets_available,"
                    " status) VALUES ('Old', 'Hall', now() + interval '1 day', 5, 5, 'ON_SALE');"
                    " INSERT INTO reservation (event_id, customer_id, quantity, status,"
                    " cancelled_at) VALUES (1, 'alice', 2, 'CANCELLED', now());"
                    " INSERT INTO reservation_change (reservation_id, kind, quantity, actor)"
                    " VALUES (1, 'CREATED', 2, 'alice'), (1, 'CANCELLED', 2, 'olivia');"
                    " INSERT INTO idempotency_key (customer_id, key, fingerprint, outcome)"
                    " VALUES ('alice', 'k', 'f', '{\"event\": {\"id\": 1}, \"reservation\": {}}')"
                )
            )
        migrations.upgrade(engine)
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT owner_id FROM event")) == "legacy-organizer"
            assert connection.execute(
                sa.text("SELECT actor, actor_role FROM reservation_change ORDER BY id")
            ).all() == [("alice", "CUSTOMER"), ("olivia", "ORGANIZER")]
            # A stored answer replays its event as the model now has it.
            assert connection.scalar(sa.text("SELECT outcome FROM idempotency_key")) == {
                "event": {"id": 1, "owner_id": "legacy-organizer"},
                "reservation": {},
            }
        with pytest.raises(sa.exc.IntegrityError, match="append-only"), engine.begin() as c:
            c.execute(sa.text("UPDATE reservation_change SET actor_role = 'ADMIN'"))
        migrations.downgrade(engine, "0003")
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT outcome FROM idempotency_key")) == {
                "event": {"id": 1},
                "reservation": {},
            }
            assert connection.scalar(sa.text("SELECT count(*) FROM reservation_change")) == 2
    finally:
        engine.dispose()


def test_holds_backfill_confirmations_and_block_a_lossy_downgrade(databases: Databases) -> None:
    """Reservations made before holds were final at once: they are confirmed when they were
    made. Once holds or waitlists are used, going back below them is refused, not lossy."""
    engine = create_db_engine(databases.create())
    try:
        migrations.upgrade(engine, "0005")
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO event (name, venue, starts_at, capacity, tickets_available,"
                    " status, owner_id) VALUES ('Old', 'Hall', now() + interval '1 day', 5, 3,"
                    " 'ON_SALE', 'olivia');"
                    " INSERT INTO reservation (event_id, customer_id, quantity, status)"
                    " VALUES (1, 'alice', 2, 'ACTIVE')"
                )
            )
        migrations.upgrade(engine)
        with engine.begin() as connection:
            assert connection.execute(
                sa.text("SELECT confirmed_at = created_at, expires_at FROM reservation")
            ).all() == [(True, None)]
            connection.execute(
                sa.text(
                    "INSERT INTO reservation (event_id, customer_id, quantity, status, expires_at)"
                    " VALUES (1, 'bob', 1, 'HELD', now() + interval '5 minutes')"
                )
            )
        with pytest.raises(RuntimeError, match="cannot go back below 0006"):
            migrations.downgrade(engine, "0005")
        with engine.connect() as connection:
            assert migrations.is_at_head(connection)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_new_revision_takes_the_next_number(databases: Databases, tmp_path: Path) -> None:
    """`alembic revision --autogenerate -m ...` as the README shows it, on a copy of the
    migrations: the file and the revision id carry the next number."""
    shutil.copy(ROOT / "alembic.ini", tmp_path)
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations", ignore=IGNORED)
    existing = sorted(path.name for path in (ROOT / "migrations" / "versions").glob("*.py"))
    last = int(existing[-1][:4])
    url = databases.create()
    engine = create_db_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "revision", "--autogenerate", "-m", "x y"],
        cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    made = tmp_path / "migrations" / "versions" / f"{last + 1:04d}_x_y.py"
    assert sorted(path.name for path in made.parent.glob("*.py")) == sorted([*existing, made.name])
    text = made.read_text()
    assert f"revision: str = '{last + 1:04d}'" in text
    assert f"down_revision: str | None = '{last:04d}'" in text


# A process that migrates at a given moment, as `ticketing serve` does before serving.
MIGRATE_AT = """
import sys, time
from ticketing import migrations
from ticketing.db import create_db_engine
engine = create_db_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
migrations.upgrade(engine)
"""


@pytest.mark.slow
def test_instances_starting_at_once_migrate_one_after_the_other(databases: Databases) -> None:
    """Every `ticketing serve` migrates first: instances deployed together on a new database
    must not trip over each other's half-built schema."""
    url = databases.create()
    at = time.time() + 5  # after every process has started and imported
    migrating = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, url, str(at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in migrating]
    assert [process.returncode for process in migrating] == [0, 0, 0], outputs
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            assert migrations.is_at_head(connection)
    finally:
        engine.dispose()
