"""What the tests share besides fixtures (those are in conftest.py): the test secret and
tokens, GraphQL over a client, events straight in the database, the database clock, and
checks of the whole database (the invariant, snapshots)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine, make_url
from starlette.testclient import TestClient

from ticketing import migrations
from ticketing.api.ids import key_of, to_global_id
from ticketing.auth import mint_token
from ticketing.db import create_db_engine
from ticketing.domain.audit import hold_mismatches, inventory_mismatches, waitlist_mismatches
from ticketing.settings import Settings

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


TABLES = "idempotency_key, waitlist_entry, reservation_change, customer_hold, reservation, event"


class Databases:
    """Creates throwaway databases on the test server and drops them at the end."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.admin = sa.create_engine(
            server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        self.created: list[str] = []

    def create(self) -> str:
        name = f"ticketing_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as connection:
            for name in self.created:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


# In one round trip: nothing when no table has a row and no sequence has been used (most
# tests write nothing); else DELETE where the role may switch triggers off for the
# transaction (a superuser, as on the embedded server), since the history's append-only
# trigger refuses a DELETE otherwise; else TRUNCATE. The used sequences go back to their start
# as RESTART IDENTITY does (setval is no more transactional than that is).
_CLEAN = sa.text(
    f"""DO $$ BEGIN
    IF {" OR ".join(f"EXISTS (SELECT FROM {table})" for table in TABLES.split(", "))}
        OR EXISTS (SELECT FROM pg_sequences
            WHERE schemaname = current_schema() AND last_value IS NOT NULL)
    THEN
        IF current_setting('is_superuser') = 'on' THEN
            PERFORM set_config('session_replication_role', 'replica', true);
            {" ".join(f"DELETE FROM {table};" for table in TABLES.split(", "))}
            PERFORM setval(format('%I.%I', schemaname, sequencename)::regclass, start_value,
                false)
            FROM pg_sequences WHERE schemaname = current_schema() AND last_value IS NOT NULL;
        ELSE
            TRUNCATE {TABLES} RESTART IDENTITY CASCADE;
        END IF;
    END IF;
END $$"""
)


def clean_tables(engine: Engine) -> None:
    """Empty the tables and restart their sequences, as a fresh database has them. A
    TRUNCATE of the tables costs 50-70 ms (new files for every table and index), DELETEs of a
    test's few rows and resetting the sequences 1-2 ms, and most tests write something."""
    with engine.begin() as connection:
        connection.execute(_CLEAN)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    # Most tests read right after a change, anonymously too; the shared answers to anonymous
    # queries (up to a second old by design) have tests of their own.
    overrides.setdefault("answer_cache_ttl_ms", 0)
    return Settings(database_url=database_url, jwt_secret=JWT_SECRET, **overrides)


def in_days(days: float) -> str:
    """The time `days` from now, as a `DateTime` value."""
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def new_event(**overrides: Any) -> dict[str, Any]:
    """A `CreateEventInput` with what it needs, and `overrides`."""
    return {
        "name": "Launch",
        "venue": "Dock 5",
        "startsAt": in_days(10),
        "capacity": 100,
        **overrides,
    }


def token(
    subject: str = "alice", *, organizer: bool = False, admin: bool = False, checkout: bool = False
) -> str:
    wanted = {"organizer": organizer, "admin": admin, "checkout": checkout}
    roles = [role for role, given in wanted.items() if given]
    return mint_token(JWT_SECRET, subject, roles=roles, ttl=timedelta(hours=1))


def auth(
    subject: str = "alice", *, organizer: bool = False, admin: bool = False, checkout: bool = False
) -> dict[str, str]:
    minted = token(subject, organizer=organizer, admin=admin, checkout=checkout)
    return {"Authorization": f"Bearer {minted}"}


# The organizer who owns the events `insert_event` makes, unless told otherwise.
ORGANIZER = auth("olivia", organizer=True)


def gql(
    client: TestClient | httpx.Client,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    expect_status: int = 200,
) -> dict[str, Any]:
    response = client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers or {}
    )
    assert response.status_code == expect_status, response.text
    body: dict[str, Any] = response.json()
    return body


def data(client: TestClient, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
    """The `data` of a response that must have no top-level errors."""
    body = gql(client, query, variables, **kw)
    assert "errors" not in body, body["errors"]
    return body["data"]


def history(reservation: dict[str, Any]) -> list[dict[str, Any]]:
    """The history lines of a reservation asked for with `history { edges { node {...} } }`."""
    return [edge["node"] for edge in reservation["history"]["edges"]]


def insert_event(
    engine: Engine,
    *,
    name: str = "Concert",
    venue: str = "Hall",
    capacity: int = 10,
    tickets_available: int | None = None,
    starts_in: timedelta = timedelta(days=7),
    max_tickets_per_customer: int | None = None,
    status: str = "ON_SALE",
    owner: str = "olivia",
    hold_minutes: int | None = None,
) -> str:
    """An event straight in the database (also ones the API can't make: started, cancelled)."""
    with engine.begin() as connection:
        key = connection.scalar(
            sa.text(
                "INSERT INTO event (name, venue, starts_at, capacity, tickets_available,"
                " max_tickets_per_customer, status, owner_id, hold_minutes) VALUES (:name,"
                " :venue, :starts_at, :capacity, :available, :limit, :status, :owner, :hold)"
                " RETURNING id"
            ),
            {
                "name": name,
                "venue": venue,
                "starts_at": datetime.now(UTC) + starts_in,
                "capacity": capacity,
                "available": capacity if tickets_available is None else tickets_available,
                "limit": max_tickets_per_customer,
                "status": status,
                "owner": owner,
                "hold": hold_minutes,
            },
        )
    return to_global_id("Event", key)


def event_key(engine: Engine, **kwargs: Any) -> int:
    """`insert_event`'s event, by its key in the database (for the domain's operations)."""
    key = key_of(insert_event(engine, **kwargs), "Event")
    assert key is not None
    return key


def start_event_now(engine: Engine, event_id: str) -> None:
    """Move an event's start into the past, as time passing would."""
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE event SET starts_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": key_of(event_id, "Event")},
        )


class DatabaseClock:
    """Moves the database's clock (`ticketing_now()`, the one every rule reads) forward, as
    time passing would, for every connection and server process at once.

    The replacement is VOLATILE, so that every statement reads the latest advance, even one
    that waited for a lock while the clock moved, as the real clock (`clock_timestamp()`)
    would; a STABLE function would read the clock table as of the statement's start.
    `frozen`: time stands still between advances, so a transaction reads one time."""

    def __init__(self, engine: Engine, *, frozen: bool = False) -> None:
        self.engine = engine
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS test_clock"
                    " (shift interval NOT NULL, frozen_at timestamptz)"
                )
            )
            connection.execute(sa.text("TRUNCATE test_clock"))
            connection.execute(
                sa.text("INSERT INTO test_clock VALUES ('0', CASE WHEN :frozen THEN now() END)"),
                {"frozen": frozen},
            )
            connection.execute(
                sa.text(
                    "CREATE OR REPLACE FUNCTION ticketing_now() RETURNS timestamptz LANGUAGE sql"
                    " VOLATILE AS"
                    " 'SELECT COALESCE(frozen_at, clock_timestamp()) + shift FROM test_clock'"
                )
            )

    def advance(self, by: timedelta, *, within: sa.Connection | None = None) -> None:
        """`within`: in that connection's transaction (which may hold locks), when it commits."""
        statement = sa.text("UPDATE test_clock SET shift = shift + :by")
        if within is not None:
            within.execute(statement, {"by": by})
            return
        with self.engine.begin() as connection:
            connection.execute(statement, {"by": by})

    def restore(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE OR REPLACE FUNCTION ticketing_now() RETURNS timestamptz LANGUAGE sql"
                    " STABLE PARALLEL SAFE AS 'SELECT clock_timestamp()'"
                )
            )
            connection.execute(sa.text("DROP TABLE test_clock"))


def lock_event_row(connection: sa.Connection, event_id: str) -> None:
    """Hold an event's row lock in the connection's transaction, as a slow request would."""
    connection.execute(
        sa.text("SELECT 1 FROM event WHERE id = :id FOR UPDATE"),
        {"id": key_of(event_id, "Event")},
    )


def invariant_violations(engine: Engine) -> list[Any]:
    """Events where available + HELD and ACTIVE reservations != capacity, customers whose hold
    differs from their reservations, offers that don't match their entry, and waiting entries
    that available tickets could serve (should be none)."""
    with engine.connect() as connection:
        return [
            *inventory_mismatches(connection),
            *hold_mismatches(connection),
            *waitlist_mismatches(connection),
        ]


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: connection.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            for table in ("event", "reservation", "reservation_change")
        }


def snapshot(engine: Engine) -> list[Any]:
    """Everything in the database, to prove a refused request changed nothing."""
    with engine.connect() as connection:
        return [
            list(connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order}")))
            for table, order in (
                ("event", "id"),
                ("reservation", "id"),
                ("reservation_change", "id"),
                ("customer_hold", "event_id, customer_id"),
                ("idempotency_key", "customer_id, key"),
                ("waitlist_entry", "id"),
            )
        ]


ROOT = Path(__file__).resolve().parent.parent


def migrated_database(maintenance_url: str) -> str:
    """The URL of a new database `ticketing` at the latest migration, on the server of
    `maintenance_url` (its `postgres` database)."""
    admin = sa.create_engine(maintenance_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text("CREATE DATABASE ticketing"))
    admin.dispose()
    url = make_url(maintenance_url).set(database="ticketing").render_as_string(hide_password=False)
    engine = create_db_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


def sample(name: str, **labels: str) -> float:
    """A metric's value in this process (the tests' app records into the default registry)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
