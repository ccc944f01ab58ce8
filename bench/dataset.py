"""The benchmark's data: 1,000 events (the first is the hot event), a hold-sale event with a
hold time, customers with reservations, the files the wrk scripts read (global IDs and bearer
tokens), and the holds of an expiry storm."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ticketing.api.ids import to_global_id
from ticketing.auth import mint_token
from ticketing.domain import clock

EVENTS = 1000
HOT_EVENT = 1  # the hot sale's
HOT_EVENT_CAPACITY = 10_000_000
EVENT_CAPACITY = 5000
TICKET_LIMIT = 10  # per customer and event, on every event
CUSTOMERS = 2000  # signed-in customers of the browse, my-reservations and mixed scenarios
RESERVATIONS_EACH = 20  # one page of myReservations
HOT_SALE_FANS = 60_000  # distinct customers for the hot sale (and the hold sale)
HOLD_EVENT = EVENTS + 1  # the hold sale's: as big as the hot event, with a hold time
HOLD_MINUTES = 10
TOKEN_LIFETIME = timedelta(hours=12)

_STATEMENTS = [
    "TRUNCATE event, reservation, reservation_change, customer_hold, idempotency_key"
    " RESTART IDENTITY CASCADE",
    # Event 1, the hot one, starts first so that it tops the browse page.
    f"""INSERT INTO event (name, description, venue, starts_at, capacity, tickets_available,
        max_tickets_per_customer, status, owner_id)
    SELECT 'Event ' || n, 'A benchmark event.', 'Venue ' || n % 50,
        now() + interval '1 day' + n * interval '1 hour', capacity, capacity, {TICKET_LIMIT},
        'ON_SALE', 'bench-organizer'
    FROM generate_series(1, {EVENTS}) AS n,
        LATERAL (SELECT CASE n WHEN 1 THEN {HOT_EVENT_CAPACITY} ELSE {EVENT_CAPACITY} END)
            AS c(capacity)""",
    f"""INSERT INTO event (name, description, venue, starts_at, capacity, tickets_available,
        max_tickets_per_customer, status, owner_id, hold_minutes)
    VALUES ('Hold sale', 'A benchmark event with a hold time.', 'Venue 0',
        now() + interval '2 days', {HOT_EVENT_CAPACITY}, {HOT_EVENT_CAPACITY}, {TICKET_LIMIT},
        'ON_SALE', 'bench-organizer', {HOLD_MINUTES})""",
    # Each customer holds 1 or 2 tickets for each of 20 consecutive events (never the hot one).
    f"""INSERT INTO reservation (event_id, customer_id, quantity, status, confirmed_at)
    SELECT 2 + (c * {RESERVATIONS_EACH} + k) % ({EVENTS} - 1), 'bench-customer-' || c,
        1 + k % 2, 'ACTIVE', now()
    FROM generate_series(1, {CUSTOMERS}) AS c, generate_series(0, {RESERVATIONS_EACH - 1}) AS k
    ORDER BY c, k""",
    """INSERT INTO reservation_change (reservation_id, kind, quantity, actor, actor_role)
    SELECT id, 'CREATED', quantity, customer_id, 'CUSTOMER' FROM reservation ORDER BY id""",
    f"""INSERT INTO customer_hold (event_id, customer_id, tickets, ticket_limit)
    SELECT event_id, customer_id, sum(quantity), {TICKET_LIMIT} FROM reservation
    GROUP BY event_id, customer_id""",
    """UPDATE event SET tickets_available = capacity - held.quantity
    FROM (SELECT event_id, sum(quantity) AS quantity FROM reservation GROUP BY event_id) AS held
    WHERE held.event_id = event.id""",
    "ANALYZE",
]


def load(engine: Engine) -> None:
    """Replace everything in the database by the benchmark's data."""
    with engine.begin() as connection:
        for statement in _STATEMENTS[:-1]:
            connection.execute(sa.text(statement))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text(_STATEMENTS[-1]))


def write_client_files(engine: Engine, secret: str, work_dir: Path) -> None:
    """What the wrk scripts read: event IDs (hot event first; the hold-sale event on its
    own), tokens, reservations."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with engine.connect() as connection:
        event_keys = connection.scalars(
            sa.text("SELECT id FROM event WHERE hold_minutes IS NULL ORDER BY id")
        ).all()
        reservations = connection.execute(
            sa.text("SELECT id, customer_id FROM reservation ORDER BY id")
        ).all()
    _write_lines(work_dir / "event_ids.txt", (to_global_id("Event", key) for key in event_keys))
    _write_lines(work_dir / "hold_event_id.txt", [to_global_id("Event", HOLD_EVENT)])
    _write_lines(
        work_dir / "reservations.txt",
        (
            f"{customer.removeprefix('bench-customer-')} {to_global_id('Reservation', key)}"
            for key, customer in reservations
        ),
    )
    _write_lines(work_dir / "customer_tokens.txt", _tokens(secret, "bench-customer", CUSTOMERS))
    _write_lines(work_dir / "hot_tokens.txt", _tokens(secret, "bench-fan", HOT_SALE_FANS))


def _tokens(secret: str, prefix: str, count: int) -> list[str]:
    """Line n (from 1) is the token of customer `<prefix>-<n>`."""
    return [mint_token(secret, f"{prefix}-{n}", ttl=TOKEN_LIFETIME) for n in range(1, count + 1)]


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


# Holds made as `createReservation` makes them (reservation, history line, customer's hold,
# event's availability), for distinct customers, spread round-robin over `event_ids`, all
# running out at `expires_at`.
_EXPIRING_HOLDS = sa.text(
    """
    WITH made AS (
        INSERT INTO reservation (event_id, customer_id, quantity, status, expires_at)
        SELECT (CAST(:event_ids AS bigint[]))[1 + n % cardinality(CAST(:event_ids AS bigint[]))],
            'bench-storm-' || n, 1 + n % 2, 'HELD', :expires_at
        FROM generate_series(0, :holds - 1) AS n
        ORDER BY n
        RETURNING id, event_id, customer_id, quantity
    ), logged AS (
        INSERT INTO reservation_change (reservation_id, kind, quantity, actor, actor_role)
        SELECT id, 'CREATED', quantity, customer_id, 'CUSTOMER' FROM made
    ), held AS (
        INSERT INTO customer_hold (event_id, customer_id, tickets, ticket_limit)
        SELECT event_id, customer_id, quantity, :ticket_limit FROM made
    )
    UPDATE event SET tickets_available = tickets_available - taken.tickets
    FROM (SELECT event_id, sum(quantity) AS tickets FROM made GROUP BY event_id) AS taken
    WHERE event.id = taken.event_id
    """
)


def add_expiring_holds(
    engine: Engine, event_ids: Sequence[int], holds: int, *, lead: timedelta
) -> datetime:
    """`holds` HELD reservations that all run out `lead` from now; returns that moment."""
    with engine.begin() as connection:
        expires_at = connection.scalar(sa.select(clock.now() + lead))
        assert isinstance(expires_at, datetime)
        connection.execute(
            _EXPIRING_HOLDS,
            {
                "event_ids": list(event_ids),
                "holds": holds,
                "expires_at": expires_at,
                "ticket_limit": TICKET_LIMIT,
            },
        )
    return expires_at
