"""What the fixtures promise the other tests: each test starts on empty tables whose
sequences start again at 1, emptying them leaves the history's append-only rule in force, and
the apps that share a database leave it open."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import RESERVE, mutation
from tests.helpers import TABLES, auth, clean_tables, data, gql, insert_event, make_settings
from ticketing.api.ids import key_of
from ticketing.app import create_app
from ticketing.db import Database

JOIN = mutation("joinWaitlist", "__typename")


def fill_every_table(client: TestClient, engine: Engine) -> None:
    sold_out = insert_event(engine, capacity=1)
    keyed = {**auth("ann"), "Idempotency-Key": "fill"}
    reserved = data(client, RESERVE, {"input": {"eventId": sold_out, "quantity": 1}}, headers=keyed)
    assert reserved["createReservation"]["__typename"] == "ReservationPayload"
    joined = data(client, JOIN, {"input": {"eventId": sold_out, "quantity": 1}}, headers=auth())
    assert joined["joinWaitlist"]["__typename"] == "WaitlistPayload"
    with engine.connect() as connection:
        for table in TABLES.split(", "):
            assert connection.scalar(sa.text(f"SELECT count(*) FROM {table}")), table


def test_cleaning_empties_every_table_and_restarts_the_ids(
    client: TestClient, engine: Engine
) -> None:
    fill_every_table(client, engine)
    clean_tables(engine)
    with engine.connect() as connection:
        for table in TABLES.split(", "):
            assert connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) == 0, table
    assert key_of(insert_event(engine), "Event") == 1
    fill_every_table(client, engine)
    with engine.connect() as connection:
        for table in ("reservation", "reservation_change", "waitlist_entry"):
            assert connection.scalar(sa.text(f"SELECT min(id) FROM {table}")) == 1, table


def test_the_history_stays_append_only_after_cleaning(client: TestClient, engine: Engine) -> None:
    fill_every_table(client, engine)
    clean_tables(engine)
    fill_every_table(client, engine)
    with engine.begin() as connection, pytest.raises(sa.exc.DBAPIError, match="append-only"):
        connection.execute(sa.text("DELETE FROM reservation_change"))


def test_an_app_keeps_the_database_it_was_given_open(
    database_url: str, shared_database: Database
) -> None:
    """The apps of `client` share pools, which each leaves as it found them."""
    for _ in range(2):
        settings = make_settings(database_url)
        app = create_app(settings, database=shared_database.on_the_same_pools())
        with TestClient(app) as client:
            assert "errors" not in gql(client, "{ events { totalCount } }")
        pools = (shared_database.engine.pool, shared_database.autocommit_engine.pool)
        assert sum(pool.checkedin() for pool in pools) > 0  # type: ignore[attr-defined]
