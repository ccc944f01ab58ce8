"""A Hypothesis state machine drives random sequences of bookings, holds, waitlist entries and
event changes by several customers against the real database, moving the database's clock,
and checks them against an in-memory model of the rules: after every step, each answer
matches the model, the database matches the model (reservations, their history and hold
ends, the waitlist and its offers), and the invariant holds.

Every lock of an event first releases its expired holds and offers the freed tickets to the
waitlist, in the caller's transaction: the model does the same on a copy of itself, which it
keeps only when the operation succeeds, as a refusal rolls that release back too."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from sqlalchemy.engine import Engine

from tests.helpers import DatabaseClock, clean_tables, insert_event, invariant_violations
from ticketing.api.ids import key_of
from ticketing.db import Database
from ticketing.domain import booking, errors, events, expiry, waitlist
from ticketing.domain.actors import Actor
from ticketing.domain.inventory import Booking
from ticketing.domain.operation import Operation

CUSTOMERS = ["ann", "ben", "cat"]
# Two organizers who each own some of the events, and an admin who manages them all.
STAFF = {
    "olga": Actor("olga", is_organizer=True),
    "oscar": Actor("oscar", is_organizer=True),
    "ada": Actor("ada", is_admin=True),
}
ORGANIZERS = ["olga", "oscar"]
# A payment backend, which may confirm anyone's hold and do nothing else.
CHECKOUT = "pay"
# Who acts on a reservation or a waitlist entry: mostly its own customer, else another.
THE_OWNER = "the owner"
someone = st.sampled_from([THE_OWNER] * 3 + CUSTOMERS)


@dataclass(frozen=True)
class WhatIsLeft:
    """Exactly the tickets left on sale, or one more: where overselling would begin (or,
    for a waitlist, where waiting begins). What is left counts the tickets of expired holds
    that the event's lock releases and the waitlist doesn't take."""

    beyond: int


# Mostly valid quantities, sometimes zero, negative or large; or what is left.
counts = st.one_of(st.integers(1, 3), st.integers(-1, 6))
quantities = counts | st.builds(WhatIsLeft, st.integers(0, 1))
# Hold times: none (final at once) or a few minutes, so that the clock's moves end them.
hold_times = st.none() | st.integers(1, 5)
# Ending an event (cancel, start) ends most of what can happen to it: only now and then, but
# often enough that what may still happen to an ended event gets checked too.
endings = st.sampled_from([None] * 8 + ["cancelled", "started"])
# Which of the reservations (or waitlist entries) made so far, as an index into them.
picks = st.integers(0, 63)

HELD, ACTIVE, CANCELLED, EXPIRED = "HELD", "ACTIVE", "CANCELLED", "EXPIRED"
WAITING, OFFERED, LEFT, CLOSED = "WAITING", "OFFERED", "LEFT", "CLOSED"
# How long an offer holds its tickets on an event without a hold time.
OFFER_MINUTES = 30
# A history line: kind, quantity, actor, actor role.
Line = tuple[str, int, str, str]


def resolve(who: str, owner: str) -> str:
    return owner if who == THE_OWNER else who


def actor(name: str) -> Actor:
    if name == CHECKOUT:
        return Actor(name, is_checkout=True)
    return STAFF.get(name, Actor(name))


@dataclass
class ModelEvent:
    capacity: int
    available: int
    limit: int | None
    organizer: str
    hold: int | None
    cancelled: bool = False
    started: bool = False


@dataclass
class ModelReservation:
    event: int
    owner: str
    quantity: int
    status: str
    # The minute of the model's clock when its hold ends (HELD, and kept once EXPIRED).
    expires: int | None
    history: list[Line]


@dataclass
class ModelEntry:
    event: int
    owner: str
    quantity: int
    status: str = WAITING
    offer: int | None = None


@dataclass
class Model:
    events: dict[int, ModelEvent] = field(default_factory=dict)
    reservations: dict[int, ModelReservation] = field(default_factory=dict)
    entries: dict[int, ModelEntry] = field(default_factory=dict)
    # How far the database's clock was moved, in minutes.
    minutes: int = 0

    def manages(self, who: str, event: int) -> bool:
        return who == "ada" or who == self.events[event].organizer

    def role(self, who: str, event: int, owner: str) -> str:
        """Who changed a reservation: its customer, the event's organizer or an admin."""
        if who == owner:
            return "CUSTOMER"
        return "ORGANIZER" if who == self.events[event].organizer else "ADMIN"

    def held(self, event: int, owner: str) -> int:
        return sum(
            r.quantity
            for r in self.reservations.values()
            if r.event == event and r.owner == owner and r.status in (HELD, ACTIVE)
        )

    def over_limit(self, event: int, owner: str, quantity: int) -> bool:
        limit = self.events[event].limit
        return limit is not None and self.held(event, owner) + quantity > limit

    def ran_out(self, event: int) -> list[ModelReservation]:
        return [
            r
            for _, r in sorted(self.reservations.items())
            if r.event == event and r.status == HELD and (r.expires or 0) <= self.minutes
        ]

    def settle(self, event: int) -> None:
        """What every lock of the event does first: release the holds that ran out, and
        offer their tickets to the waitlist while the event is on sale."""
        state = self.events[event]
        ran_out = self.ran_out(event)
        for mine in ran_out:
            mine.status = EXPIRED
            mine.history.append(("EXPIRED", mine.quantity, "system", "SYSTEM"))
            state.available += mine.quantity
        if ran_out and not state.cancelled and not state.started:
            self.promote(event)

    def promote(self, event: int) -> None:
        """Serve the waiting entries in the order they joined, skipping any whose whole
        quantity doesn't fit or that would take its customer over the limit."""
        state = self.events[event]
        for key, entry in sorted(self.entries.items()):
            if entry.event != event or entry.status != WAITING:
                continue
            if entry.quantity > state.available or self.over_limit(
                event, entry.owner, entry.quantity
            ):
                continue
            entry.status, entry.offer = OFFERED, -key  # named by the database once made
            self.reservations[-key] = ModelReservation(
                event,
                entry.owner,
                entry.quantity,
                HELD,
                self.minutes + (state.hold or OFFER_MINUTES),
                [("OFFERED", entry.quantity, "system", "SYSTEM")],
            )
            state.available -= entry.quantity

    def quantity(self, event: int, amount: int | WhatIsLeft) -> int:
        if isinstance(amount, WhatIsLeft):
            return self.events[event].available + amount.beyond
        return amount

    def event_refusal(self, event: int) -> str | None:
        state = self.events[event]
        return "EventCancelled" if state.cancelled else "EventStarted" if state.started else None

    def adding_refusal(self, event: int, owner: str, quantity: int) -> str | None:
        if self.events[event].available < quantity:
            return "NotEnoughTickets"
        if self.over_limit(event, owner, quantity):
            return "CustomerLimitReached"
        return None

    def reservation_refusal(self, reservation: int) -> str | None:
        """The refusal to change a reservation, in the one order every path shares."""
        mine = self.reservations[reservation]
        state = self.events[mine.event]
        return (
            "EventCancelled"
            if state.cancelled
            else "ReservationCancelled"
            if mine.status == CANCELLED
            else "HoldExpired"
            if mine.status == EXPIRED
            else "EventStarted"
            if state.started
            else None
        )

    def reserved(self, reservation: int, event: int, owner: str, quantity: int) -> None:
        state = self.events[event]
        state.available -= quantity
        self.reservations[reservation] = ModelReservation(
            event,
            owner,
            quantity,
            HELD if state.hold else ACTIVE,
            None if state.hold is None else self.minutes + state.hold,
            [("CREATED", quantity, owner, "CUSTOMER")],
        )

    def give_back(self, reservation: int, kind: str, quantity: int, who: str) -> None:
        mine = self.reservations[reservation]
        mine.history.append((kind, quantity, who, self.role(who, mine.event, mine.owner)))
        if kind == "CANCELLED":
            mine.status, mine.expires = CANCELLED, None
        else:
            mine.quantity -= quantity
        self.events[mine.event].available += quantity
        self.promote(mine.event)


class BookingMachine(RuleBasedStateMachine):
    engine: Engine  # set by the test

    events_made = Bundle("events")

    def __init__(self) -> None:
        super().__init__()
        self.db = Database(self.engine, max_threads=1)
        self.clock = DatabaseClock(self.engine)
        self.model = Model()

    def teardown(self) -> None:
        self.clock.restore()

    def attempt(self, operation: Operation[Any], *, at_once: bool = False) -> tuple[str, Any]:
        """Run the operation in a transaction, or first on its own as the API does when
        `at_once` (a request without an idempotency key)."""
        try:
            done = None
            if at_once and operation.on_its_own is not None:
                done = self.db.autocommit(operation.on_its_own)
            if done is None:
                done = self.db.transaction(operation)
            outcome = "ok"
        except errors.DomainError as refusal:
            outcome, done = type(refusal).__name__, None
        work = operation.in_transaction
        name = getattr(work, "func", work).__qualname__.split(".")[0]
        hypothesis.event(f"{name}: {outcome}")
        return outcome, done

    def settled(self, event: int) -> Model:
        """The model as the event's lock sees it."""
        trial = copy.deepcopy(self.model)
        trial.settle(event)
        return trial

    def commit(self, trial: Model) -> None:
        """Keep `trial`, with its new offers under the ids the database gave them."""
        offered = {-key: key for key, entry in trial.entries.items() if (entry.offer or 0) < 0}
        if offered:
            hypothesis.event(f"offers made: {len(offered)}")
            with self.engine.connect() as connection:
                named = connection.execute(
                    sa.text("SELECT id, reservation_id FROM waitlist_entry WHERE id = ANY(:ids)"),
                    {"ids": list(offered.values())},
                ).all()
            for entry_id, reservation_id in named:
                if reservation_id is not None:
                    trial.entries[entry_id].offer = reservation_id
                    trial.reservations[reservation_id] = trial.reservations.pop(-entry_id)
        self.model = trial

    def pick(self, found: dict[int, Any], index: int) -> int:
        keys = sorted(found)
        return keys[index % len(keys)]

    @initialize(
        target=events_made,
        capacities=st.lists(st.integers(1, 5), min_size=1, max_size=3),
        limits=st.lists(st.none() | st.integers(1, 4), min_size=1, max_size=3),
        holds=st.lists(hold_times, min_size=1, max_size=3),
        organizer=st.sampled_from(ORGANIZERS),
        sales=st.lists(st.tuples(picks, st.sampled_from(CUSTOMERS), quantities), max_size=6),
        waiting=st.lists(st.tuples(picks, st.sampled_from(CUSTOMERS), quantities), max_size=3),
    )
    def make_events(
        self,
        capacities: list[int],
        limits: list[int | None],
        holds: list[int | None],
        organizer: str,
        sales: list[tuple[int, str, int | WhatIsLeft]],
        waiting: list[tuple[int, str, int | WhatIsLeft]],
    ) -> Any:
        """Events, then their first reservations and waitlist entries (each checked like
        any other), so that most runs start with events sold, or sold out and waited for."""
        clean_tables(self.engine)
        keys = []
        for number, capacity in enumerate(capacities):
            # The organizers take turns, so most runs have events of both.
            owner = ORGANIZERS[(ORGANIZERS.index(organizer) + number) % len(ORGANIZERS)]
            limit, hold = limits[number % len(limits)], holds[number % len(holds)]
            key = key_of(
                insert_event(
                    self.engine,
                    capacity=capacity,
                    max_tickets_per_customer=limit,
                    owner=owner,
                    hold_minutes=hold,
                ),
                "Event",
            )
            assert key is not None
            self.model.events[key] = ModelEvent(capacity, capacity, limit, owner, hold)
            keys.append(key)
        for pick, customer, amount in sales:
            self.reserve(keys[pick % len(keys)], customer, amount, at_once=True)
        for pick, customer, amount in waiting:
            self.join_waitlist(keys[pick % len(keys)], customer, amount)
        return multiple(*keys)

    @rule(
        event=events_made,
        owner=st.sampled_from(CUSTOMERS),
        amount=quantities,
        at_once=st.booleans(),
    )
    def reserve(self, event: int, owner: str, amount: int | WhatIsLeft, at_once: bool) -> None:
        trial = self.settled(event)
        quantity = trial.quantity(event, amount)
        expected = (
            "InvalidQuantity"
            if quantity < 1
            else trial.event_refusal(event) or trial.adding_refusal(event, owner, quantity)
        ) or "ok"
        outcome, done = self.attempt(
            booking.reserve(event_id=event, actor=Actor(owner), quantity=quantity),
            at_once=at_once,
        )
        assert outcome == expected
        if outcome != "ok":
            return
        trial.reserved(done.reservation.id, event, owner, quantity)
        self.commit(trial)

    @rule(
        event=events_made,
        asked=st.lists(st.tuples(st.sampled_from(CUSTOMERS), quantities), min_size=1, max_size=5),
    )
    def reserve_together(self, event: int, asked: list[tuple[str, int | WhatIsLeft]]) -> None:
        """Concurrent reservations of one event, decided in one statement as the API gathers
        them (`Database.run_together`): each as if they came one after the other. With
        holds to release, it decides nothing and each runs alone, as there. (An invalid
        quantity always runs alone: `reserve` covers it.)"""
        gathered = []
        for owner, amount in asked:
            quantity = self.model.quantity(event, amount)
            together = booking.reserve(
                event_id=event, actor=Actor(owner), quantity=quantity
            ).together
            if together is not None:
                gathered.append((owner, quantity, together))
        if not gathered:
            return
        items = [together.item for _, _, together in gathered]
        decide_all = gathered[0][2].decide_all
        answers = self.db.autocommit(lambda session: decide_all(session, items))
        if self.model.ran_out(event):
            assert answers is None
            hypothesis.event("together: each alone")
            for owner, quantity, _ in gathered:
                self.reserve(event, owner, quantity, at_once=True)
            return
        assert answers is not None
        trial = copy.deepcopy(self.model)
        for (owner, quantity, _), answer in zip(gathered, answers, strict=True):
            expected = (
                trial.event_refusal(event) or trial.adding_refusal(event, owner, quantity) or "ok"
            )
            outcome = "ok" if isinstance(answer, Booking) else type(answer).__name__
            hypothesis.event(f"together: {outcome}")
            assert outcome == expected
            if isinstance(answer, errors.NotEnoughTickets):
                assert answer == errors.NotEnoughTickets(quantity, trial.events[event].available)
            if isinstance(answer, errors.CustomerLimitReached):
                assert answer.held == trial.held(event, owner)
            if isinstance(answer, Booking):
                assert answer.reservation.id is not None
                trial.reserved(answer.reservation.id, event, owner, quantity)
        self.commit(trial)

    def change_refusal(self, trial: Model, reservation: int, who: str, quantity: int) -> str | None:
        """Only its customer may change a reservation's quantity."""
        return (
            "InvalidQuantity"
            if quantity < 1
            else "NotFound"
            if who != trial.reservations[reservation].owner
            else trial.reservation_refusal(reservation)
        )

    @precondition(lambda self: self.model.reservations)
    @rule(pick=picks, who=someone, amount=quantities)
    def increase(self, pick: int, who: str, amount: int | WhatIsLeft) -> None:
        reservation = self.pick(self.model.reservations, pick)
        trial = self.settled(self.model.reservations[reservation].event)
        mine = trial.reservations[reservation]
        who, quantity = resolve(who, mine.owner), trial.quantity(mine.event, amount)
        expected = (
            self.change_refusal(trial, reservation, who, quantity)
            or trial.adding_refusal(mine.event, mine.owner, quantity)
            or "ok"
        )
        outcome, _ = self.attempt(
            booking.increase(reservation_id=reservation, actor=Actor(who), quantity=quantity)
        )
        assert outcome == expected
        if outcome == "ok":
            mine.quantity += quantity
            mine.history.append(("INCREASED", quantity, who, "CUSTOMER"))
            trial.events[mine.event].available -= quantity
            self.commit(trial)

    @precondition(lambda self: self.model.reservations)
    @rule(pick=picks, who=someone, quantity=counts)
    def decrease(self, pick: int, who: str, quantity: int) -> None:
        reservation = self.pick(self.model.reservations, pick)
        trial = self.settled(self.model.reservations[reservation].event)
        mine = trial.reservations[reservation]
        who = resolve(who, mine.owner)
        expected = self.change_refusal(trial, reservation, who, quantity) or (
            "InvalidQuantity" if quantity >= mine.quantity else "ok"
        )
        outcome, _ = self.attempt(
            booking.decrease(reservation_id=reservation, actor=Actor(who), quantity=quantity)
        )
        assert outcome == expected
        if outcome == "ok":
            trial.give_back(reservation, "DECREASED", quantity, who)
            self.commit(trial)

    @precondition(lambda self: self.model.reservations)
    @rule(pick=picks, who=someone | st.sampled_from([*STAFF, CHECKOUT]))
    def cancel(self, pick: int, who: str) -> None:
        reservation = self.pick(self.model.reservations, pick)
        trial = self.settled(self.model.reservations[reservation].event)
        mine = trial.reservations[reservation]
        who = resolve(who, mine.owner)
        expected = (
            "NotFound"
            if who != mine.owner and not trial.manages(who, mine.event)
            else "ok"
            if mine.status == CANCELLED
            else trial.reservation_refusal(reservation) or "ok"
        )
        outcome, _ = self.attempt(booking.cancel(reservation_id=reservation, actor=actor(who)))
        assert outcome == expected
        if outcome == "ok":
            if mine.status != CANCELLED:
                trial.give_back(reservation, "CANCELLED", mine.quantity, who)
            self.commit(trial)

    @precondition(lambda self: self.model.reservations)
    @rule(pick=picks, who=someone | st.sampled_from([CHECKOUT, "olga"]))
    def confirm(self, pick: int, who: str) -> None:
        """Its customer or a checkout may; confirming an ACTIVE reservation changes nothing."""
        reservation = self.pick(self.model.reservations, pick)
        trial = self.settled(self.model.reservations[reservation].event)
        mine = trial.reservations[reservation]
        who = resolve(who, mine.owner)
        expected = (
            "NotFound"
            if who not in (mine.owner, CHECKOUT)
            else "ok"
            if mine.status == ACTIVE
            else trial.reservation_refusal(reservation) or "ok"
        )
        outcome, _ = self.attempt(booking.confirm(reservation_id=reservation, actor=actor(who)))
        assert outcome == expected
        if outcome == "ok":
            if mine.status == HELD:
                mine.status, mine.expires = ACTIVE, None
                role = "CUSTOMER" if who == mine.owner else "CHECKOUT"
                mine.history.append(("CONFIRMED", mine.quantity, who, role))
            self.commit(trial)

    def event_change_refusal(self, trial: Model, event: int, staff: str) -> str | None:
        return "NotFound" if not trial.manages(staff, event) else trial.event_refusal(event)

    @rule(
        event=events_made,
        staff=st.sampled_from(list(STAFF)),
        change=st.tuples(st.just("capacity"), st.integers(0, 12))
        | st.tuples(st.just("max_tickets_per_customer"), st.none() | st.integers(1, 4))
        | st.tuples(st.just("hold_minutes"), hold_times | st.sampled_from([0, 121])),
    )
    def change_event(self, event: int, staff: str, change: tuple[str, int | None]) -> None:
        """The capacity (never below the tickets reserved; availability follows it), the
        per-customer limit, or the hold time (of new holds and offers only)."""
        name, value = change
        trial = self.settled(event)
        state = trial.events[event]
        invalid = (
            value is not None and value < state.capacity - state.available
            if name == "capacity"
            else name == "hold_minutes" and value is not None and not 1 <= value <= 120
        )
        expected = self.event_change_refusal(trial, event, staff) or (
            "InvalidEvent" if invalid else "ok"
        )
        outcome, _ = self.attempt(events.update_event(event, {name: value}, STAFF[staff]))
        assert outcome == expected
        if outcome != "ok":
            return
        if name == "capacity":
            assert value is not None
            state.available += value - state.capacity
            state.capacity = value
        elif name == "max_tickets_per_customer":
            state.limit = value
        else:
            state.hold = value
        # More capacity, or a higher limit, may serve someone waiting.
        trial.promote(event)
        self.commit(trial)

    @rule(event=events_made, staff=st.sampled_from(list(STAFF)), ending=endings)
    def the_event_ends(self, event: int, staff: str, ending: str | None) -> None:
        if ending == "cancelled":
            self.cancel_event(event, staff)
        elif ending == "started":
            self.time_passes_and_the_event_starts(event)

    def cancel_event(self, event: int, staff: str) -> None:
        trial = self.settled(event)
        state = trial.events[event]
        expected = (
            "NotFound"
            if not trial.manages(staff, event)
            else "ok"
            if state.cancelled
            else trial.event_refusal(event) or "ok"
        )
        outcome, _ = self.attempt(events.cancel_event(event, STAFF[staff]))
        assert outcome == expected
        if outcome != "ok":
            return
        if not state.cancelled:
            state.cancelled, state.available = True, state.capacity
            for mine in trial.reservations.values():
                if mine.event == event and mine.status in (HELD, ACTIVE):
                    mine.status, mine.expires = CANCELLED, None
                    line = ("CANCELLED", mine.quantity, staff, trial.role(staff, event, ""))
                    mine.history.append(line)
            for entry in trial.entries.values():
                if entry.event == event and entry.status == WAITING:
                    entry.status = CLOSED
        self.commit(trial)

    def time_passes_and_the_event_starts(self, event: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE event SET starts_at = now() - :ago WHERE id = :id"),
                {"ago": timedelta(minutes=1), "id": event},
            )
        self.model.events[event].started = True

    @precondition(lambda self: any(r.status == HELD for r in self.model.reservations.values()))
    @rule(minutes=st.integers(0, 6) | st.integers(OFFER_MINUTES - 1, OFFER_MINUTES + 1))
    def time_passes(self, minutes: int) -> None:
        """Holds run out (up to a minute past the longest hold time, or an offer's), but
        nothing releases them until their event is locked or swept."""
        self.clock.advance(timedelta(minutes=minutes))
        self.model.minutes += minutes

    @precondition(lambda self: any(map(self.model.ran_out, self.model.events)))
    @rule(rounds=st.integers(1, 2), batch=st.integers(1, 3))
    def sweep(self, rounds: int, batch: int) -> None:
        """Rounds of the sweepers, each settling at most `batch` of the events with holds
        that ran out: a later round finds the others, or nothing left to release."""
        for _ in range(rounds):
            due = self.db.autocommit(lambda session: expiry.due_events(session, limit=batch))
            ran_out = {key for key in self.model.events if self.model.ran_out(key)}
            assert set(due) <= ran_out
            assert len(due) == min(batch, len(ran_out))
            trial = copy.deepcopy(self.model)
            for key in due:
                self.db.transaction(expiry.settle(key))
                trial.settle(key)
            self.commit(trial)

    @rule(event=events_made, owner=st.sampled_from(CUSTOMERS), amount=quantities)
    def join_waitlist(self, event: int, owner: str, amount: int | WhatIsLeft) -> None:
        """Waiting is refused while what is asked for is on sale (reserve instead)."""
        trial = self.settled(event)
        state = trial.events[event]
        quantity = trial.quantity(event, amount)
        expected = (
            "InvalidQuantity"
            if quantity < 1
            else trial.event_refusal(event)
            or (
                "InvalidQuantity"
                if quantity > state.capacity
                else "CustomerLimitReached"
                if trial.over_limit(event, owner, quantity)
                else "TicketsAvailable"
                if state.available >= quantity
                else "ok"
            )
        )
        outcome, done = self.attempt(
            waitlist.join(event_id=event, actor=Actor(owner), quantity=quantity)
        )
        assert outcome == expected
        if outcome == "ok":
            trial.entries[done.entry.id] = ModelEntry(event, owner, quantity)
            self.commit(trial)

    @precondition(lambda self: self.model.entries)
    @rule(pick=picks, who=someone)
    def leave_waitlist(self, pick: int, who: str) -> None:
        """A waiting entry is left; one served, left or closed stays as it is."""
        key = self.pick(self.model.entries, pick)
        trial = self.settled(self.model.entries[key].event)
        entry = trial.entries[key]
        who = resolve(who, entry.owner)
        expected = "NotFound" if who != entry.owner else "ok"
        outcome, _ = self.attempt(waitlist.leave(entry_id=key, actor=Actor(who)))
        assert outcome == expected
        if outcome == "ok":
            if entry.status == WAITING:
                entry.status = LEFT
            self.commit(trial)

    @invariant()
    def database_matches_the_model(self) -> None:
        with self.engine.connect() as connection:
            stored_events = {
                row.id: (
                    row.capacity,
                    row.tickets_available,
                    row.max_tickets_per_customer,
                    row.hold_minutes,
                    row.status == "CANCELLED",
                )
                for row in connection.execute(sa.text("SELECT * FROM event"))
            }
            stored_reservations = {
                row.id: (row.event_id, row.customer_id, row.quantity, row.status)
                for row in connection.execute(sa.text("SELECT * FROM reservation"))
            }
            stored_entries = {
                row.id: (
                    row.event_id,
                    row.customer_id,
                    row.quantity,
                    row.status,
                    row.reservation_id,
                )
                for row in connection.execute(sa.text("SELECT * FROM waitlist_entry"))
            }
            # How long each hold has left (HELD), or since when it ran out (EXPIRED).
            left = dict(
                connection.execute(
                    sa.text(
                        "SELECT id, expires_at - ticketing_now() FROM reservation"
                        " WHERE status IN ('HELD', 'EXPIRED')"
                    )
                ).all()
            )
        assert stored_events == {
            key: (e.capacity, e.available, e.limit, e.hold, e.cancelled)
            for key, e in self.model.events.items()
        }
        assert stored_reservations == {
            key: (r.event, r.owner, r.quantity, r.status)
            for key, r in self.model.reservations.items()
        }
        assert stored_entries == {
            key: (e.event, e.owner, e.quantity, e.status, e.offer)
            for key, e in self.model.entries.items()
        }
        # The model's clock moves by whole minutes; the database's also runs meanwhile, by
        # less than a minute over one run.
        for key, remaining in left.items():
            expires = self.model.reservations[key].expires
            assert expires is not None
            planned = timedelta(minutes=expires - self.model.minutes)
            assert planned - timedelta(minutes=1) < remaining <= planned, key
        assert invariant_violations(self.engine) == []

    @invariant()
    def history_matches_the_model(self) -> None:
        """Each reservation's history, in order: what changed, by how much, and who did it in
        which role (its customer, the event's organizer, an admin, a checkout confirming, or
        the system expiring a hold or making an offer)."""
        stored: dict[int, list[Line]] = {key: [] for key in self.model.reservations}
        with self.engine.connect() as connection:
            for key, kind, quantity, who, role in connection.execute(
                sa.text(
                    "SELECT reservation_id, kind, quantity, actor, actor_role"
                    " FROM reservation_change ORDER BY id"
                )
            ):
                stored.setdefault(key, []).append((kind, quantity, who, role))
        assert stored == {key: r.history for key, r in self.model.reservations.items()}


TestBookingRules = BookingMachine.TestCase
TestBookingRules.settings = settings(
    # 80 runs in the full suite; the `fast` profile (`make test-fast`, see conftest.py) caps
    # them, to keep the inner loop short.
    max_examples=min(80, settings().max_examples),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _machine_engine(engine: Engine) -> None:
    BookingMachine.engine = engine
