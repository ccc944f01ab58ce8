"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL, or an embedded server in a temporary
directory), a migrated database per test session, emptied after each test that wrote to it,
and an HTTP client speaking GraphQL to an app of its own (on pools the session's apps share).
What the tests import is in tests/helpers.py, tests/graphql_documents.py (the GraphQL
documents) and tests/servers.py (server processes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import Engine, make_url
from starlette.testclient import TestClient

from tests.helpers import DatabaseClock, Databases, clean_tables, make_settings, migrated_database
from ticketing import migrations
from ticketing.app import create_app
from ticketing.db import Database, create_db_engine
from ticketing.settings import Settings, postgresql_url

# `make test-fast` runs a few examples of each property (HYPOTHESIS_PROFILE=fast); `make test`
# and CI run Hypothesis' default profile and the counts the tests ask for.
hypothesis_settings.register_profile("fast", max_examples=8)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a PostgreSQL server's maintenance database (`postgres`)."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        try:
            url = postgresql_url(given)
        except ValueError as error:
            pytest.exit(f"TEST_DATABASE_URL: {error}", returncode=pytest.ExitCode.USAGE_ERROR)
        yield url
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    socket_dir = make_url(server.get_uri()).query["host"]
    url = f"postgresql+psycopg2://postgres@/postgres?host={socket_dir}"
    # A throwaway server, which no test stops or crashes (those that do have their own):
    # nothing need reach the disk before a commit returns. What a transaction sees, locks
    # and notifies is the same; a commit costs a tenth.
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            connection.execute(sa.text(f"ALTER SYSTEM SET {setting} = off"))
        connection.execute(sa.text("SELECT pg_reload_conf()"))
    admin.dispose()
    yield url
    server.cleanup()


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A PostgreSQL server of this test's own, so that it can be stopped and started."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("own-pg"), cleanup_mode="stop")
    socket_dir = make_url(server.get_uri()).query["host"]
    yield server, migrated_database(f"postgresql+psycopg2://postgres@/postgres?host={socket_dir}")
    server.cleanup()


@pytest.fixture(scope="session")
def databases(server_url: str) -> Iterator[Databases]:
    made = Databases(server_url)
    yield made
    made.drop_all()


@pytest.fixture(scope="session")
def database_url(databases: Databases) -> str:
    url = databases.create()
    engine = create_db_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    made = create_db_engine(database_url)
    yield made
    made.dispose()


@pytest.fixture(autouse=True)
def _clean_tables(request: pytest.FixtureRequest) -> None:
    if "engine" in request.fixturenames:
        clean_tables(request.getfixturevalue("engine"))


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    """The settings of `client`'s apps (made once: reading them from the environment takes
    3-5 ms)."""
    return make_settings(database_url)


@pytest.fixture(scope="session")
def shared_database(settings: Settings, database_url: str) -> Iterator[Database]:
    """The pools of `client`'s apps: every app's own would open new connections, and a new
    connection's first statements cost PostgreSQL 15-20 ms (its caches)."""
    made = Database.from_settings(settings, database_url)
    yield made
    made.dispose()


@pytest.fixture
def client(settings: Settings, engine: Engine, shared_database: Database) -> Iterator[TestClient]:
    app = create_app(settings, database=shared_database.on_the_same_pools())
    with TestClient(app) as made:
        yield made


@pytest.fixture
def db(engine: Engine) -> Database:
    """Runs the domain's operations straight on the test database, without an app."""
    return Database(engine, max_threads=20)


@pytest.fixture
def database_clock(engine: Engine) -> Iterator[DatabaseClock]:
    made = DatabaseClock(engine)
    yield made
    made.restore()
