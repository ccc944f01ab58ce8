"""Timed holds: HELD reservations, confirmation, expiry (on every lock and by the sweeper)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import create_reservation, mutation
from tests.helpers import (
    ORGANIZER,
    DatabaseClock,
    auth,
    data,
    history,
    insert_event,
    invariant_violations,
    lock_event_row,
    make_settings,
    snapshot,
    start_event_now,
)
from ticketing import background
from ticketing.api.ids import key_of, to_global_id
from ticketing.db import Database
from ticketing.domain import booking, errors, expiry, waitlist
from ticketing.domain.actors import Actor

T = TypeVar("T")

RESERVATION = """
    reservation { id quantity status expiresAt confirmedAt cancelledAt
                  history { edges { node { kind quantity actor } } } }
    event { id ticketsAvailable }
"""
RESULT = f"""
    __typename
    ... on ReservationPayload {{ {RESERVATION} }}
    ... on Error {{ message }}
"""
LIMITS = "... on CustomerLimitReached { limit held } ... on NotEnoughTickets { available }"
EXPIRED = "... on HoldExpired { expiredAt }"
CREATE = create_reservation(f"{RESULT} {LIMITS}")
CONFIRM = mutation("confirmReservation", f"{RESULT} {EXPIRED}")
UPDATE = mutation("updateReservation", f"{RESULT} {LIMITS} {EXPIRED}")
CANCEL = mutation("cancelReservation", f"{RESULT} {EXPIRED}")


def create(client: TestClient, event_id: str, quantity: int, who: str = "alice") -> Any:
    return data(
        client, CREATE, {"input": {"eventId": event_id, "quantity": quantity}}, headers=auth(who)
    )["createReservation"]


def confirm(client: TestClient, reservation_id: str, headers: dict[str, str]) -> Any:
    return data(client, CONFIRM, {"input": {"reservationId": reservation_id}}, headers=headers)[
        "confirmReservation"
    ]


def reservation(client: TestClient, reservation_id: str, who: str = "alice") -> Any:
    return data(
        client,
        "query($id: ID!) { reservation(id: $id) { status quantity expiresAt confirmedAt"
        " history { edges { node { kind quantity actor } } } event { ticketsAvailable } } }",
        {"id": reservation_id},
        headers=auth(who),
    )["reservation"]


def wait_for_status(
    client: TestClient,
    reservation_id: str,
    status: str,
    *,
    only_in_database: Engine | None = None,
    within_s: float = 5,
) -> Any:
    """The reservation once it has `status`: the sweeper's work, which runs every 0.25 s (the
    wait allows for a busy machine; the benchmark measures how soon).
    With `only_in_database`, poll the table rather than the API, so that no request's lock
    can do the sweeper's work."""
    deadline = time.monotonic() + within_s
    while True:
        if only_in_database is not None:
            with only_in_database.connect() as connection:
                found = connection.scalar(
                    sa.text("SELECT status FROM reservation WHERE id = :id"),
                    {"id": key_of(reservation_id, "Reservation")},
                )
        else:
            found = reservation(client, reservation_id)["status"]
        if found == status or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found == status
    return reservation(client, reservation_id)


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def test_an_event_with_a_hold_time_holds_then_confirms(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=5, hold_minutes=10)
    made = create(client, event_id, 2)
    assert made["__typename"] == "ReservationPayload"
    held = made["reservation"]
    assert held["status"] == "HELD"
    assert held["confirmedAt"] is None
    with engine.connect() as connection:
        now = connection.scalar(sa.text("SELECT now()"))
    assert timedelta(minutes=9) < at(held["expiresAt"]) - now <= timedelta(minutes=10, seconds=5)
    assert made["event"]["ticketsAvailable"] == 3

    done = confirm(client, held["id"], auth("alice"))
    assert done["__typename"] == "ReservationPayload"
    final = done["reservation"]
    assert (final["status"], final["expiresAt"]) == ("ACTIVE", None)
    assert final["confirmedAt"] is not None
    assert [(line["kind"], line["actor"]) for line in history(final)] == [
        ("CREATED", "CUSTOMER"),
        ("CONFIRMED", "CUSTOMER"),
    ]
    # Confirming again changes nothing.
    before = snapshot(engine)
    again = confirm(client, held["id"], auth("alice"))
    assert again["reservation"]["confirmedAt"] == final["confirmedAt"]
    assert snapshot(engine) == before
    assert invariant_violations(engine) == []


def test_an_event_without_a_hold_time_is_final_at_once(client: TestClient, engine: Engine) -> None:
    made = create(client, insert_event(engine), 1)["reservation"]
    assert (made["status"], made["expiresAt"]) == ("ACTIVE", None)
    assert made["confirmedAt"] is not None


def test_a_checkout_confirms_anyones_hold_and_others_find_nothing(
    client: TestClient, engine: Engine
) -> None:
    held = create(client, insert_event(engine, hold_minutes=5), 1)["reservation"]
    for stranger in (auth("bob"), ORGANIZER, auth("ada", admin=True)):
        assert confirm(client, held["id"], stranger)["__typename"] == "NotFound"
    done = confirm(client, held["id"], auth("payments", checkout=True))
    assert done["reservation"]["status"] == "ACTIVE"
    assert history(done["reservation"])[-1] == {
        "kind": "CONFIRMED",
        "quantity": 1,
        "actor": "CHECKOUT",
    }


def test_changes_to_a_hold_keep_its_end(client: TestClient, engine: Engine) -> None:
    held = create(client, insert_event(engine, hold_minutes=5), 2)["reservation"]
    for operation in ("INCREASE", "DECREASE"):
        changed = data(
            client,
            UPDATE,
            {"input": {"reservationId": held["id"], "operation": operation, "quantity": 1}},
            headers=auth(),
        )["updateReservation"]["reservation"]
        assert (changed["status"], changed["expiresAt"]) == ("HELD", held["expiresAt"])
    cancelled = data(client, CANCEL, {"input": {"reservationId": held["id"]}}, headers=auth())
    gone = cancelled["cancelReservation"]["reservation"]
    assert (gone["status"], gone["expiresAt"]) == ("CANCELLED", None)
    assert invariant_violations(engine) == []


def test_a_hold_that_ran_out_refuses_everything_with_hold_expired(
    client: TestClient, engine: Engine, database_clock: DatabaseClock
) -> None:
    event_id = insert_event(engine, capacity=4, hold_minutes=5)
    held = create(client, event_id, 3)["reservation"]
    database_clock.advance(timedelta(minutes=5, seconds=1))
    before_any = reservation(client, held["id"])
    refusals = [
        confirm(client, held["id"], auth()),
        data(
            client,
            UPDATE,
            {"input": {"reservationId": held["id"], "operation": "INCREASE", "quantity": 1}},
            headers=auth(),
        )["updateReservation"],
        data(
            client,
            UPDATE,
            {"input": {"reservationId": held["id"], "operation": "DECREASE", "quantity": 1}},
            headers=auth(),
        )["updateReservation"],
        data(client, CANCEL, {"input": {"reservationId": held["id"]}}, headers=auth())[
            "cancelReservation"
        ],
    ]
    assert {refusal["__typename"] for refusal in refusals} == {"HoldExpired"}
    assert {refusal["expiredAt"] for refusal in refusals} == {held["expiresAt"]}
    # A refusal rolls back the release it saw; the sweeper commits it within moments.
    assert before_any["status"] in ("HELD", "EXPIRED")
    after = wait_for_status(client, held["id"], "EXPIRED")
    assert after["expiresAt"] is None
    assert after["event"]["ticketsAvailable"] == 4
    assert history(after) == [
        {"kind": "CREATED", "quantity": 3, "actor": "CUSTOMER"},
        {"kind": "EXPIRED", "quantity": 3, "actor": "SYSTEM"},
    ]
    assert invariant_violations(engine) == []


def test_the_sweeper_expires_holds_on_an_event_nobody_touches(
    client: TestClient, engine: Engine, database_clock: DatabaseClock
) -> None:
    event_id = insert_event(engine, capacity=4, hold_minutes=1)
    held = create(client, event_id, 2)["reservation"]
    database_clock.advance(timedelta(minutes=1))
    with engine.connect() as connection:
        due = connection.scalar(sa.text("SELECT expires_at - ticketing_now() FROM reservation"))
    assert due <= timedelta(0)
    expired = wait_for_status(client, held["id"], "EXPIRED", only_in_database=engine)
    assert expired["event"]["ticketsAvailable"] == 4
    assert invariant_violations(engine) == []


def test_expired_holds_cover_a_reservation_before_any_sweep(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    """No sweeper runs here: the reservation itself releases the expired holds it needs."""
    event = key_of(insert_event(engine, capacity=3, hold_minutes=2), "Event")
    assert event is not None
    held = db.transaction(booking.reserve(event_id=event, actor=Actor("alice"), quantity=3))
    assert held.reservation.status == "HELD"
    with pytest.raises(errors.NotEnoughTickets):
        db.transaction(booking.reserve(event_id=event, actor=Actor("bob"), quantity=2))
    database_clock.advance(timedelta(minutes=2))
    # The one-statement attempt misses (tickets still held); the locked path releases them.
    operation = booking.reserve(event_id=event, actor=Actor("bob"), quantity=2)
    assert operation.on_its_own is not None
    assert db.autocommit(operation.on_its_own) is None
    taken = db.transaction(operation)
    assert (taken.reservation.quantity, taken.event.tickets_available) == (2, 1)
    assert invariant_violations(engine) == []


def hold_on_events(db: Database, engine: Engine, count: int, **event: Any) -> list[int]:
    """`count` events with a hold time of a minute, each with 2 tickets held by alice, bob and
    carol."""
    events = []
    for _ in range(count):
        key = key_of(insert_event(engine, capacity=6, hold_minutes=1, **event), "Event")
        assert key is not None
        for customer in ("alice", "bob", "carol"):
            db.transaction(booking.reserve(event_id=key, actor=Actor(customer), quantity=2))
        events.append(key)
    return events


def sweep_in_bulk(db: Database, *, limit: int) -> int:
    """One round of the sweeper's bulk path: the events it settled."""
    due = db.autocommit(lambda s: expiry.due_events(s, limit=limit))
    return db.transaction(expiry.settle_due(due)) if due else 0


def expired_everywhere(engine: Engine, events: int) -> None:
    with engine.connect() as connection:
        lines = connection.execute(
            sa.text("SELECT kind, count(*) FROM reservation_change GROUP BY kind ORDER BY kind")
        ).all()
        available = connection.scalars(sa.text("SELECT tickets_available FROM event")).all()
    assert lines == [("CREATED", 3 * events), ("EXPIRED", 3 * events)]
    assert available == [6] * events
    assert invariant_violations(engine) == []


def test_expired_holds_no_longer_count_against_the_limit_before_any_sweep(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    """The one-statement attempt would count the expired hold in the customer's tickets: it
    leaves an event with expired holds to the locked path, which releases them first."""
    event = key_of(
        insert_event(engine, capacity=5, max_tickets_per_customer=2, hold_minutes=2), "Event"
    )
    assert event is not None
    db.transaction(booking.reserve(event_id=event, actor=Actor("alice"), quantity=2))
    database_clock.advance(timedelta(minutes=2))
    operation = booking.reserve(event_id=event, actor=Actor("alice"), quantity=2)
    assert operation.on_its_own is not None
    assert db.autocommit(operation.on_its_own) is None
    taken = db.transaction(operation)
    assert (taken.reservation.quantity, taken.event.tickets_available) == (2, 3)
    assert invariant_violations(engine) == []


def test_expired_holds_go_to_the_waitlist_before_a_bystander_before_any_sweep(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    """One ticket is on sale and an expired hold has another: together they serve the
    waiting entry for two, so the bystander asking for the one on sale is refused."""
    event = key_of(insert_event(engine, capacity=2, hold_minutes=2), "Event")
    assert event is not None
    db.transaction(booking.reserve(event_id=event, actor=Actor("alice"), quantity=1))
    entry = db.transaction(waitlist.join(event_id=event, actor=Actor("bob"), quantity=2)).entry
    database_clock.advance(timedelta(minutes=2))
    operation = booking.reserve(event_id=event, actor=Actor("carol"), quantity=1)
    assert operation.on_its_own is not None
    assert db.autocommit(operation.on_its_own) is None
    with pytest.raises(errors.NotEnoughTickets):
        db.transaction(operation)
    # The refusal rolled the release back with it; the sweep commits it.
    db.transaction(expiry.settle(event))
    with engine.connect() as connection:
        served = connection.execute(
            sa.text(
                "SELECT entry.status, offer.customer_id, offer.quantity, event.tickets_available"
                " FROM waitlist_entry AS entry JOIN reservation AS offer"
                " ON offer.id = entry.reservation_id JOIN event ON event.id = entry.event_id"
                " WHERE entry.id = :id"
            ),
            {"id": entry.id},
        ).one()
    assert tuple(served) == ("OFFERED", "bob", 2, 0)
    assert invariant_violations(engine) == []


def test_processes_sweeping_at_once_release_each_hold_once(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    hold_on_events(db, engine, 6)
    database_clock.advance(timedelta(minutes=1))

    def sweep(number: int) -> None:
        # Half settle in bulk, a few events at a time; half wait for each event in turn.
        if number % 2:
            while sweep_in_bulk(db, limit=2):
                pass
        for event_id in db.autocommit(lambda s: expiry.due_events(s, limit=100)):
            db.transaction(expiry.settle(event_id))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(sweep, range(8)))
    expired_everywhere(engine, 6)


def test_a_sweep_settles_many_events_in_the_same_few_statements(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    """A storm of expiries over many events costs a few statements per hundred events, not a
    transaction per event (10,000 holds over 1,000 events took 15 s that way)."""
    hold_on_events(db, engine, 20)
    database_clock.advance(timedelta(minutes=1))
    sent: list[str] = []

    def capture(*args: Any) -> None:
        sent.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        settled = [sweep_in_bulk(db, limit=2)]
        two_events = len(sent)
        settled.append(sweep_in_bulk(db, limit=100))
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert settled == [2, 18]
    # Find the due events, lock them, release, look for waiting entries; twice.
    assert len(sent) == 2 * two_events <= 8
    assert sweep_in_bulk(db, limit=100) == 0
    expired_everywhere(engine, 20)


def test_a_sweep_skips_locked_events_and_offers_the_rest_to_their_waitlists(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    busy, waited_for = hold_on_events(db, engine, 2)
    [started] = hold_on_events(db, engine, 1, starts_in=timedelta(seconds=30))
    for event in (waited_for, started):
        db.transaction(waitlist.join(event_id=event, actor=Actor("dave"), quantity=3))
    database_clock.advance(timedelta(minutes=1))
    with engine.connect() as blocker:
        lock_event_row(blocker, to_global_id("Event", busy))
        assert sweep_in_bulk(db, limit=100) == 2
        blocker.commit()
    assert sweep_in_bulk(db, limit=100) == 1
    with engine.connect() as connection:
        entries = connection.execute(
            sa.text("SELECT event_id, status FROM waitlist_entry ORDER BY event_id")
        ).all()
        offered = connection.scalar(
            sa.text("SELECT tickets_available FROM event WHERE id = :id"), {"id": waited_for}
        )
    # Served in the transaction that released the tickets; not once the event has started.
    assert entries == [(waited_for, "OFFERED"), (started, "WAITING")]
    assert offered == 3
    assert invariant_violations(engine) == []


def test_the_sweeper_waits_for_an_event_that_bulk_sweeps_find_locked(
    db: Database, database_url: str, engine: Engine, database_clock: DatabaseClock
) -> None:
    """A hot event whose attempts are all refused rolls back every release it sees, and bulk
    sweeps skip it while locked: only a sweep that waits for its lock commits the release."""
    [event] = hold_on_events(db, engine, 1)
    database_clock.advance(timedelta(minutes=1))
    settings = make_settings(database_url, hold_sweep_interval_s=0.05)

    async def sweep_while_locked() -> None:
        sweeper = asyncio.create_task(background.release_expired_holds(db, settings))
        try:
            with engine.connect() as blocker:
                lock_event_row(blocker, to_global_id("Event", event))
                await until(lambda: lock_waits(engine) > 0)
                assert lock_waits(engine) == 1
                blocker.commit()
            await until(lambda: lock_waits(engine) + held(engine) == 0)
        finally:
            sweeper.cancel()

    asyncio.run(sweep_while_locked())
    expired_everywhere(engine, 1)


async def until(condition: Callable[[], bool], within_s: float = 5) -> None:
    for _ in range(int(within_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


def lock_waits(engine: Engine) -> int:
    with engine.connect() as connection:
        waiting: int = connection.scalar(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        )
    return waiting


def held(engine: Engine) -> int:
    with engine.connect() as connection:
        count: int = connection.scalar(
            sa.text("SELECT count(*) FROM reservation WHERE status = 'HELD'")
        )
    return count


def while_time_passes_on_the_locked_event(
    engine: Engine,
    clock: DatabaseClock,
    event_id: str,
    work: Callable[[], T],
    by: timedelta,
    *,
    reservation: int | None = None,
) -> T:
    """Run `work` while another transaction holds the event's lock (and `reservation`'s, as
    an operation on it would); the clock moves `by` while `work` waits for it."""
    with ThreadPoolExecutor(1) as pool, engine.connect() as blocker:
        with blocker.begin():
            lock_event_row(blocker, event_id)
            if reservation is not None:
                blocker.execute(
                    sa.text("SELECT 1 FROM reservation WHERE id = :id FOR UPDATE"),
                    {"id": reservation},
                )
            waiting = pool.submit(work)
            deadline = time.monotonic() + 10
            while not blocker.scalar(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                assert time.monotonic() < deadline, "the work never waited for the lock"
                time.sleep(0.01)
            clock.advance(by, within=blocker)
        return waiting.result(timeout=10)


def test_a_hold_that_runs_out_while_its_confirmation_waits_for_the_lock_is_not_confirmed(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    """PostgreSQL evaluates a statement's conditions and a locking SELECT's columns before
    waiting for a lock: the expiry check must be made once the lock is held, not as of the
    request's arrival. A confirmation waits for the reservation's row (held here, as an
    operation on it would), not the event's."""
    event_id = insert_event(engine, capacity=2, hold_minutes=1)
    event = key_of(event_id, "Event")
    assert event is not None
    held = db.transaction(booking.reserve(event_id=event, actor=Actor("alice"), quantity=2))
    assert held.reservation.id is not None
    confirmation = booking.confirm(reservation_id=held.reservation.id, actor=Actor("alice"))
    with pytest.raises(errors.HoldExpired):
        while_time_passes_on_the_locked_event(
            engine,
            database_clock,
            event_id,
            lambda: db.transaction(confirmation),
            timedelta(minutes=1),
            reservation=held.reservation.id,
        )
    assert invariant_violations(engine) == []


def test_holds_that_run_out_while_a_reservation_waits_for_the_lock_cover_it(
    db: Database, engine: Engine, database_clock: DatabaseClock
) -> None:
    event_id = insert_event(engine, capacity=2, hold_minutes=1)
    event = key_of(event_id, "Event")
    assert event is not None
    db.transaction(booking.reserve(event_id=event, actor=Actor("alice"), quantity=2))
    reservation = booking.reserve(event_id=event, actor=Actor("bob"), quantity=2)
    taken = while_time_passes_on_the_locked_event(
        engine, database_clock, event_id, lambda: db.transaction(reservation), timedelta(minutes=1)
    )
    assert (taken.reservation.customer_id, taken.event.tickets_available) == ("bob", 0)
    with engine.connect() as connection:
        statuses = connection.execute(
            sa.text("SELECT customer_id, status FROM reservation ORDER BY id")
        ).all()
    assert statuses == [("alice", "EXPIRED"), ("bob", "HELD")]
    assert invariant_violations(engine) == []


def test_the_limit_counts_held_tickets(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10, max_tickets_per_customer=3, hold_minutes=5)
    create(client, event_id, 2)
    refused = create(client, event_id, 2)
    assert refused["__typename"] == "CustomerLimitReached"
    assert (refused["limit"], refused["held"]) == (3, 2)


def test_confirming_after_the_start_is_refused(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, hold_minutes=5)
    held = create(client, event_id, 1)["reservation"]
    start_event_now(engine, event_id)
    assert confirm(client, held["id"], auth())["__typename"] == "EventStarted"


@pytest.mark.parametrize("minutes", [0, 121, -5])
def test_hold_times_outside_1_to_120_minutes_are_refused(
    client: TestClient, engine: Engine, minutes: int
) -> None:
    event_id = insert_event(engine)
    answer = data(
        client,
        mutation("updateEvent", "__typename ... on InvalidEvent { field }"),
        {"input": {"eventId": event_id, "holdMinutes": minutes}},
        headers=ORGANIZER,
    )["updateEvent"]
    assert answer == {"__typename": "InvalidEvent", "field": "holdMinutes"}


def test_a_new_hold_time_applies_to_new_holds_only(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, hold_minutes=5)
    first = create(client, event_id, 1)["reservation"]
    data(
        client,
        mutation("updateEvent", "__typename"),
        {"input": {"eventId": event_id, "holdMinutes": None}},
        headers=ORGANIZER,
    )
    assert reservation(client, first["id"])["expiresAt"] == first["expiresAt"]
    assert create(client, event_id, 1)["reservation"]["status"] == "ACTIVE"


def test_confirming_does_not_wait_for_the_events_row(client: TestClient, engine: Engine) -> None:
    """No tickets move, so a confirmation doesn't queue behind a hot event's reservations."""
    event_id = insert_event(engine, capacity=5, hold_minutes=5)
    held = create(client, event_id, 2)["reservation"]
    with engine.connect() as blocker:
        blocker.begin()
        lock_event_row(blocker, event_id)
        # Waiting for the lock would end in SERVICE_UNAVAILABLE after the lock timeout.
        done = confirm(client, held["id"], auth())
        blocker.rollback()
    assert done["reservation"]["status"] == "ACTIVE"
    assert invariant_violations(engine) == []
