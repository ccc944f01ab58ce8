"""Reservations of one event decided together (`inventory.take_together`, and the
gathering of concurrent requests into one such statement): each answered as alone it would
be, first come first served, the event's row locked once."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.helpers import DatabaseClock, insert_event, invariant_violations, snapshot
from ticketing.api.ids import key_of
from ticketing.db import Database
from ticketing.domain import booking, errors
from ticketing.domain.actors import Actor
from ticketing.domain.inventory import Asked, Booking, take_together
from ticketing.domain.models import ReservationStatus


@pytest.fixture
def db(engine: Engine) -> Database:
    return Database(engine, max_threads=20)


def event_key(engine: Engine, **kwargs: object) -> int:
    key = key_of(insert_event(engine, **kwargs), "Event")  # type: ignore[arg-type]
    assert key is not None
    return key


def together(db: Database, event_id: int, *asked: tuple[str, int]) -> list[object] | None:
    return db.autocommit(
        lambda session: take_together(
            session, event_id=event_id, asked=[Asked(who, quantity) for who, quantity in asked]
        )
    )


def outcome(answer: object) -> object:
    """A booking as its quantity and status, a refusal as itself."""
    if isinstance(answer, Booking):
        return (answer.reservation.customer_id, answer.reservation.quantity)
    return answer


def test_first_come_first_served_with_mixed_quantities(db: Database, engine: Engine) -> None:
    key = event_key(engine, capacity=10)
    answers = together(db, key, ("a", 4), ("b", 5), ("c", 3), ("d", 1), ("e", 2))
    assert answers is not None
    # c can't have 3 of the 1 left, but d, after it, takes that one; e finds none.
    assert [outcome(answer) for answer in answers] == [
        ("a", 4),
        ("b", 5),
        errors.NotEnoughTickets(requested=3, available=1),
        ("d", 1),
        errors.NotEnoughTickets(requested=2, available=0),
    ]
    bookings = [answer for answer in answers if isinstance(answer, Booking)]
    assert len({booking.reservation.id for booking in bookings}) == 3
    assert {booking.event.tickets_available for booking in bookings} == {0}
    assert {booking.reservation.status for booking in bookings} == {ReservationStatus.ACTIVE}
    with engine.connect() as connection:
        history = connection.execute(
            sa.text(
                "SELECT r.customer_id, c.kind, c.quantity, c.actor_role FROM reservation_change c"
                " JOIN reservation r ON r.id = c.reservation_id ORDER BY r.id"
            )
        ).all()
    assert [tuple(line) for line in history] == [
        ("a", "CREATED", 4, "CUSTOMER"),
        ("b", "CREATED", 5, "CUSTOMER"),
        ("d", "CREATED", 1, "CUSTOMER"),
    ]
    assert invariant_violations(engine) == []


def test_the_limit_counts_earlier_requests_of_the_same_batch(db: Database, engine: Engine) -> None:
    key = event_key(engine, capacity=20, max_tickets_per_customer=4)
    assert together(db, key, ("a", 1)) is not None
    answers = together(db, key, ("a", 2), ("b", 3), ("a", 2), ("a", 1), ("b", 2), ("c", 5))
    assert answers is not None
    assert [outcome(answer) for answer in answers] == [
        ("a", 2),
        ("b", 3),
        errors.CustomerLimitReached(limit=4, held=3),
        ("a", 1),
        errors.CustomerLimitReached(limit=4, held=3),
        errors.CustomerLimitReached(limit=4, held=0),
    ]
    assert invariant_violations(engine) == []


def test_refusals_come_in_the_one_order(db: Database, engine: Engine) -> None:
    """Not enough tickets before the limit, as for a reservation alone; a started or
    cancelled event refuses them all, and changes nothing."""
    key = event_key(engine, capacity=3, max_tickets_per_customer=2)
    answers = together(db, key, ("a", 3))
    assert answers is not None
    assert [outcome(answer) for answer in answers] == [errors.CustomerLimitReached(2, 0)]
    alone = booking.reserve(event_id=key, actor=Actor("a"), quantity=4)
    with pytest.raises(errors.NotEnoughTickets):
        db.transaction(alone)
    answers = together(db, key, ("a", 4))
    assert answers is not None
    assert [outcome(answer) for answer in answers] == [errors.NotEnoughTickets(4, 3)]
    for status, starts_in, refusal in (
        ("CANCELLED", timedelta(days=1), errors.EventCancelled),
        ("ON_SALE", timedelta(minutes=-1), errors.EventStarted),
    ):
        closed = event_key(engine, status=status, starts_in=starts_in)
        before = snapshot(engine)
        answers = together(db, closed, ("a", 1), ("b", 2))
        assert answers is not None
        assert [type(answer) for answer in answers] == [refusal, refusal]
        assert snapshot(engine) == before


def test_holds_are_made_on_an_event_with_a_hold_time(db: Database, engine: Engine) -> None:
    key = event_key(engine, capacity=5, hold_minutes=10)
    answers = together(db, key, ("a", 2), ("b", 2))
    assert answers is not None
    for answer in answers:
        assert isinstance(answer, Booking)
        assert answer.reservation.status == ReservationStatus.HELD
        assert answer.reservation.expires_at is not None
    assert invariant_violations(engine) == []


def test_nothing_is_decided_on_an_event_with_expired_holds_or_none(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    """Only the event's lock releases holds that ran out: each request goes that way."""
    key = event_key(engine, capacity=5, hold_minutes=1)
    assert together(db, key, ("a", 2)) is not None
    database_clock.advance(timedelta(minutes=2))
    before = snapshot(engine)
    assert together(db, key, ("b", 4)) is None
    assert snapshot(engine) == before
    assert together(db, key + 1000, ("b", 1)) is None


def test_a_batch_that_fails_half_way_commits_nothing(db: Database, engine: Engine) -> None:
    key = event_key(engine, capacity=10)
    before = snapshot(engine)
    # The third reservation's history line fails: the two before it must not stay.
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE FUNCTION fail_third() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF (SELECT count(*) FROM reservation_change) >= 2 THEN"
                " RAISE EXCEPTION 'injected'; END IF; RETURN NEW; END $$;"
                " CREATE TRIGGER fail_third BEFORE INSERT ON reservation_change"
                " FOR EACH ROW EXECUTE FUNCTION fail_third()"
            )
        )
    try:
        with pytest.raises(sa.exc.InternalError, match="injected"):
            together(db, key, ("a", 1), ("b", 1), ("c", 1))
    finally:
        with engine.begin() as connection:
            connection.execute(
                sa.text("DROP TRIGGER fail_third ON reservation_change; DROP FUNCTION fail_third()")
            )
    assert snapshot(engine) == before
