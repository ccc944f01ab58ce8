"""The booking core on its own: plain Python calls against the database, no GraphQL."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tests.helpers import event_key, invariant_violations, snapshot
from ticketing.db import Database
from ticketing.domain import booking, errors, events
from ticketing.domain.actors import Actor
from ticketing.domain.inventory import Booking
from ticketing.domain.models import ReservationStatus

ALICE = Actor("alice")
OLIVIA = Actor("olivia", is_organizer=True)  # owns the events `insert_event` makes


def test_reserve_then_change_then_cancel(db: Database, engine: Engine) -> None:
    key = event_key(engine, capacity=10)
    made = db.transaction(booking.reserve(event_id=key, actor=ALICE, quantity=4))
    assert made.event.tickets_available == 6
    reservation_id = made.reservation.id
    assert reservation_id is not None
    grown = db.transaction(booking.increase(reservation_id=reservation_id, actor=ALICE, quantity=2))
    assert (grown.reservation.quantity, grown.event.tickets_available) == (6, 4)
    shrunk = db.transaction(
        booking.decrease(reservation_id=reservation_id, actor=ALICE, quantity=5)
    )
    assert (shrunk.reservation.quantity, shrunk.event.tickets_available) == (1, 9)
    gone = db.transaction(booking.cancel(reservation_id=reservation_id, actor=ALICE))
    assert gone.reservation.status == ReservationStatus.CANCELLED
    assert gone.event.tickets_available == 10


@pytest.mark.parametrize("mode", ["transaction", "autocommit"])
def test_a_limit_refusal_changes_nothing(db: Database, engine: Engine, mode: str) -> None:
    key = event_key(engine, capacity=10, max_tickets_per_customer=3)
    run = db.transaction if mode == "transaction" else db.autocommit

    def reserve(quantity: int) -> Callable[[Session], Booking]:
        operation = booking.reserve(event_id=key, actor=ALICE, quantity=quantity)
        work = operation.in_transaction if mode == "transaction" else operation.on_its_own
        assert work is not None
        return work

    run(reserve(2))
    before = snapshot(engine)
    # The statement takes the tickets before the customer's hold refuses: it must all undo.
    with pytest.raises(errors.CustomerLimitReached) as refused:
        run(reserve(2))
    assert (refused.value.limit, refused.value.held) == (3, 2)
    assert snapshot(engine) == before

    def refused_then_within_the_limit(session: Session) -> Booking:
        with pytest.raises(errors.CustomerLimitReached):
            reserve(2)(session)
        # The failed statement didn't spoil the transaction (a savepoint held it).
        return reserve(1)(session)

    assert run(refused_then_within_the_limit).event.tickets_available == 7
    assert invariant_violations(engine) == []


def test_database_constraints_back_the_rules(engine: Engine) -> None:
    key = event_key(engine, capacity=2)
    for statement in (
        "UPDATE event SET tickets_available = -1 WHERE id = :id",
        "UPDATE event SET tickets_available = capacity + 1 WHERE id = :id",
        "INSERT INTO reservation (event_id, customer_id, quantity, confirmed_at)"
        " VALUES (:id, 'x', 0, now())",
        "INSERT INTO reservation (event_id, customer_id, quantity, status, confirmed_at)"
        " VALUES (:id, 'x', 1, 'CANCELLED', now())",
        # Final without a confirmation time; held without an end; an end once final.
        "INSERT INTO reservation (event_id, customer_id, quantity) VALUES (:id, 'x', 1)",
        "INSERT INTO reservation (event_id, customer_id, quantity, status)"
        " VALUES (:id, 'x', 1, 'HELD')",
        "INSERT INTO reservation (event_id, customer_id, quantity, confirmed_at, expires_at)"
        " VALUES (:id, 'x', 1, now(), now())",
        # An offer without its reservation.
        "INSERT INTO waitlist_entry (event_id, customer_id, quantity, status)"
        " VALUES (:id, 'x', 1, 'OFFERED')",
        "UPDATE event SET hold_minutes = 121 WHERE id = :id",
    ):
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(sa.text(statement), {"id": key})


def test_threads_racing_for_the_last_tickets(db: Database, engine: Engine) -> None:
    key = event_key(engine, capacity=25, max_tickets_per_customer=3)

    def attempt(index: int) -> str:
        actor = Actor(f"customer-{index % 10}")
        try:
            db.transaction(booking.reserve(event_id=key, actor=actor, quantity=2))
        except errors.DomainError as refusal:
            return type(refusal).__name__
        return "ok"

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(attempt, range(60)))
    # 10 customers may hold at most one pair each (limit 3), and 25 tickets fit 12 pairs.
    assert results.count("ok") == 10
    assert set(results) == {"ok", "CustomerLimitReached"}
    assert invariant_violations(engine) == []


def test_capacity_changes_race_with_reservations(db: Database, engine: Engine) -> None:
    key = event_key(engine, capacity=40)

    def reserve(index: int) -> None:
        actor = Actor(f"c{index}")
        with contextlib.suppress(errors.NotEnoughTickets):
            db.transaction(booking.reserve(event_id=key, actor=actor, quantity=1))

    def shrink(capacity: int) -> None:
        changes = {"capacity": capacity}
        with contextlib.suppress(errors.InvalidEvent):
            db.transaction(events.update_event(key, changes, OLIVIA))

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(reserve, index) for index in range(60)]
        futures += [pool.submit(shrink, capacity) for capacity in range(40, 20, -2)]
        for future in futures:
            future.result()  # re-raises anything but the expected refusals
    assert invariant_violations(engine) == []


def test_started_events_take_no_reservations(db: Database, engine: Engine) -> None:
    key = event_key(engine, starts_in=timedelta(minutes=-5))
    with pytest.raises(errors.EventStarted):
        db.transaction(booking.reserve(event_id=key, actor=ALICE, quantity=1))
