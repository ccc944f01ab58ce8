"""Reservations of one event decided together (`inventory.take_together`, and the
gathering of concurrent requests into one such statement): each answered as alone it would
be, first come first served, the event's row locked once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.helpers import DatabaseClock, event_key, invariant_violations, snapshot
from ticketing.db import Database, DatabaseUnavailable, Gatherer
from ticketing.domain import booking, errors
from ticketing.domain.actors import Actor
from ticketing.domain.inventory import Asked, Booking, take_together
from ticketing.domain.models import ReservationStatus
from ticketing.domain.operation import Together


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


def test_a_huge_quantity_is_refused_without_failing_the_others(
    db: Database, engine: Engine
) -> None:
    key = event_key(engine, capacity=10, max_tickets_per_customer=4)
    answers = together(db, key, ("a", 2**31 - 1), ("b", 1))
    assert answers is not None
    assert [outcome(answer) for answer in answers] == [
        errors.NotEnoughTickets(requested=2**31 - 1, available=10),
        ("b", 1),
    ]


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


# The gathering of concurrent requests (`db.Gatherer`), first with a stand-in for the
# database, then for real.


class Units:
    """Runs units as `Database.run_autocommit` would, recording their items; each unit
    takes until `release` is set, if given."""

    def __init__(self) -> None:
        self.ran: list[list[object]] = []
        self.release: asyncio.Event | None = None

    async def __call__(self, work: Callable[[Any], Any], key: Hashable) -> Any:
        if self.release is not None:
            await self.release.wait()
        return work(self)

    def decide_all(self, session: object, items: list[object]) -> list[object] | None:
        self.ran.append(items)
        if "fail" in items:
            raise RuntimeError("the database broke")
        if "undecided" in items:
            return None
        return [
            errors.NotFound("Event", 0) if item == "refused" else f"done {item}" for item in items
        ]

    def asking(self, item: object) -> Together[object, object]:
        return Together(("event", 1), item, self.decide_all)


def test_a_lone_request_runs_at_once() -> None:
    units = Units()

    async def main() -> None:
        gatherer = Gatherer(units, max_size=32, wait_s=5)
        started = asyncio.get_running_loop().time()
        assert await gatherer(units.asking("a")) == "done a"
        assert asyncio.get_running_loop().time() - started < 0.05
        assert await gatherer(units.asking("b")) == "done b"

    asyncio.run(main())
    assert units.ran == [["a"], ["b"]]


def test_requests_arriving_while_a_unit_runs_go_together_in_the_next() -> None:
    units = Units()

    async def main() -> list[object]:
        gatherer = Gatherer(units, max_size=3, wait_s=5)
        units.release = asyncio.Event()
        first = asyncio.create_task(gatherer(units.asking("a")))
        await asyncio.sleep(0)
        others = [
            asyncio.create_task(gatherer(units.asking(item)))
            for item in ("b", "refused", "c", "d", "e")
        ]
        await asyncio.sleep(0.01)
        units.release.set()
        return await asyncio.gather(first, *others, return_exceptions=True)

    answers = asyncio.run(main())
    # One unit at a time, of at most three, in the order they came; each its own answer.
    assert units.ran == [["a"], ["b", "refused", "c"], ["d", "e"]]
    assert answers == [
        "done a",
        "done b",
        errors.NotFound("Event", 0),
        "done c",
        "done d",
        "done e",
    ]


def test_a_failing_unit_answers_each_of_its_requests() -> None:
    units = Units()

    async def main() -> list[object]:
        gatherer = Gatherer(units, max_size=32, wait_s=5)
        units.release = asyncio.Event()
        first = asyncio.create_task(gatherer(units.asking("a")))
        await asyncio.sleep(0)
        failing = [asyncio.create_task(gatherer(units.asking(item))) for item in ("b", "fail")]
        await asyncio.sleep(0.01)
        units.release.set()
        answers = await asyncio.wait_for(
            asyncio.gather(first, *failing, return_exceptions=True), timeout=5
        )
        # The key's units ended: the next request starts one anew.
        answers.append(await gatherer(units.asking("undecided")))
        return answers

    answers = asyncio.run(main())
    assert answers[0] == "done a"
    assert [type(answer) for answer in answers[1:3]] == [RuntimeError, RuntimeError]
    assert answers[3] is None  # decided nothing: it must run alone


def test_requests_that_gave_up_or_waited_too_long_are_left_out() -> None:
    units = Units()

    async def main() -> list[object]:
        gatherer = Gatherer(units, max_size=32, wait_s=0.05)
        units.release = asyncio.Event()
        first = asyncio.create_task(gatherer(units.asking("a")))
        await asyncio.sleep(0)
        gone = asyncio.create_task(gatherer(units.asking("gone")))
        late = asyncio.create_task(gatherer(units.asking("late")))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0.1)
        units.release.set()
        return await asyncio.gather(first, gone, late, return_exceptions=True)

    first, gone, late = asyncio.run(main())
    assert first == "done a"
    assert isinstance(gone, asyncio.CancelledError)
    assert isinstance(late, DatabaseUnavailable)
    assert units.ran == [["a"]]


def test_concurrent_reservations_through_the_database(engine: Engine) -> None:
    """Each request its own answer; a unit that fails half-way commits nothing and answers
    every request in it; the others stand."""
    key = event_key(engine, capacity=30, max_tickets_per_customer=3)
    database = Database(engine, max_threads=8, batch_size=32)
    sizes: list[int] = []
    database.observe_units(sizes.append)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE FUNCTION fail_for_bob() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.actor = 'bob' THEN RAISE EXCEPTION 'injected'; END IF;"
                " RETURN NEW; END $$;"
                " CREATE TRIGGER fail_for_bob BEFORE INSERT ON reservation_change"
                " FOR EACH ROW EXECUTE FUNCTION fail_for_bob()"
            )
        )
    asked = [("ann", 2), ("cid", 2), ("ann", 2), ("dan", 3), ("bob", 1), ("eve", 1)]

    async def main() -> list[object]:
        async def reserve(who: str, quantity: int) -> object:
            together = booking.reserve(event_id=key, actor=Actor(who), quantity=quantity).together
            assert together is not None
            return await database.run_together(together)

        first = asyncio.create_task(reserve("zed", 1))
        await asyncio.sleep(0)  # zed's unit runs: the others gather for the next
        rest = [asyncio.create_task(reserve(who, quantity)) for who, quantity in asked]
        return await asyncio.wait_for(
            asyncio.gather(first, *rest, return_exceptions=True), timeout=10
        )

    try:
        answers = asyncio.run(main())
    finally:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "DROP TRIGGER fail_for_bob ON reservation_change; DROP FUNCTION fail_for_bob()"
                )
            )
    assert isinstance(answers[0], Booking)
    assert [type(answer) for answer in answers[1:]] == [sa.exc.InternalError] * len(asked)
    with engine.connect() as connection:
        customers = connection.scalars(sa.text("SELECT customer_id FROM reservation")).all()
    assert customers == ["zed"]
    assert invariant_violations(engine) == []
    assert sizes == [1, len(asked)]
