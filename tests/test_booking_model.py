"""A Hypothesis state machine drives random sequences of bookings and event changes by several
customers against the real database and checks them against an in-memory model of the rules:
after every step, each answer matches the model, the database matches the model, and the
invariant holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

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
    rule,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tests.conftest import TABLES, insert_event, invariant_violations
from ticketing.api.ids import key_of
from ticketing.db import Database
from ticketing.domain import booking, errors, events
from ticketing.domain.booking import Actor

CUSTOMERS = ["ann", "ben", "cat"]
# Two organizers who each own some of the events, and an admin who manages them all.
STAFF = {
    "olga": Actor("olga", is_organizer=True),
    "oscar": Actor("oscar", is_organizer=True),
    "ada": Actor("ada", is_admin=True),
}
ORGANIZERS = ["olga", "oscar"]
# Mostly valid quantities, sometimes zero, negative or large.
quantities = st.one_of(st.integers(1, 3), st.integers(-1, 6))
# Ending an event (cancel, start) ends most of what can happen to it: only now and then, but
# often enough that what may still happen to an ended event gets checked too.
seldom = st.sampled_from([False] * 3 + [True])


@dataclass
class ModelEvent:
    capacity: int
    available: int
    limit: int | None
    organizer: str
    cancelled: bool = False
    started: bool = False


@dataclass
class ModelReservation:
    event: int
    owner: str
    quantity: int
    cancelled: bool = False


@dataclass
class Model:
    events: dict[int, ModelEvent] = field(default_factory=dict)
    reservations: dict[int, ModelReservation] = field(default_factory=dict)

    def manages(self, who: str, event: int) -> bool:
        return who == "ada" or who == self.events[event].organizer

    def held(self, event: int, owner: str) -> int:
        return sum(
            r.quantity
            for r in self.reservations.values()
            if r.event == event and r.owner == owner and not r.cancelled
        )


def refusal_for_adding(model: Model, event: int, owner: str, quantity: int) -> str | None:
    state = model.events[event]
    if state.available < quantity:
        return "NotEnoughTickets"
    if state.limit is not None and model.held(event, owner) + quantity > state.limit:
        return "CustomerLimitReached"
    return None


class BookingMachine(RuleBasedStateMachine):
    engine: Engine  # set by the test

    events_made = Bundle("events")
    reservations_made = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.db = Database(self.engine, max_threads=1)
        self.model = Model()

    def attempt(self, work: Callable[[Session], Any]) -> tuple[str, Any]:
        try:
            return "ok", self.db.transaction(work)
        except errors.DomainError as refusal:
            return type(refusal).__name__, None

    @initialize(
        target=events_made,
        capacities=st.lists(st.integers(0, 10), min_size=1, max_size=3),
        limit=st.none() | st.integers(1, 4),
        organizer=st.sampled_from(ORGANIZERS),
    )
    def make_events(self, capacities: list[int], limit: int | None, organizer: str) -> Any:
        with self.engine.begin() as connection:
            connection.execute(sa.text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        keys = []
        for number, capacity in enumerate(capacities):
            # The organizers take turns, so most runs have events of both.
            owner = ORGANIZERS[(ORGANIZERS.index(organizer) + number) % len(ORGANIZERS)]
            key = key_of(
                insert_event(
                    self.engine, capacity=capacity, max_tickets_per_customer=limit, owner=owner
                ),
                "Event",
            )
            assert key is not None
            self.model.events[key] = ModelEvent(capacity, capacity, limit, owner)
            keys.append(key)
        return multiple(*keys)

    @rule(
        target=reservations_made,
        event=events_made,
        owner=st.sampled_from(CUSTOMERS),
        quantity=quantities,
    )
    def reserve(self, event: int, owner: str, quantity: int) -> Any:
        return self.try_reserve(event, owner, quantity)

    @rule(
        target=reservations_made,
        event=events_made,
        owner=st.sampled_from(CUSTOMERS),
        beyond=st.integers(0, 1),
    )
    def reserve_at_the_edge(self, event: int, owner: str, beyond: int) -> Any:
        """Asks for exactly what is left, or one more: where overselling would begin."""
        return self.try_reserve(event, owner, self.model.events[event].available + beyond)

    def try_reserve(self, event: int, owner: str, quantity: int) -> Any:
        state = self.model.events[event]
        expected = (
            "InvalidQuantity"
            if quantity < 1
            else "EventCancelled"
            if state.cancelled
            else "EventStarted"
            if state.started
            else refusal_for_adding(self.model, event, owner, quantity)
        ) or "ok"
        outcome, done = self.attempt(
            lambda s: booking.reserve(s, event_id=event, actor=Actor(owner), quantity=quantity)
        )
        assert outcome == expected
        if outcome != "ok":
            return multiple()
        state.available -= quantity
        self.model.reservations[done.reservation.id] = ModelReservation(event, owner, quantity)
        return done.reservation.id

    def change_refusal(self, reservation: int, actor: str, quantity: int) -> str | None:
        mine = self.model.reservations[reservation]
        state = self.model.events[mine.event]
        return (
            "InvalidQuantity"
            if quantity < 1
            else "NotFound"
            if actor != mine.owner
            else "EventCancelled"
            if state.cancelled
            else "ReservationCancelled"
            if mine.cancelled
            else "EventStarted"
            if state.started
            else None
        )

    @rule(reservation=reservations_made, actor=st.sampled_from(CUSTOMERS), quantity=quantities)
    def increase(self, reservation: int, actor: str, quantity: int) -> None:
        self.try_increase(reservation, actor, quantity)

    @rule(reservation=reservations_made, beyond=st.integers(0, 1))
    def increase_at_the_edge(self, reservation: int, beyond: int) -> None:
        """The owner asks for exactly what is left, or one more."""
        mine = self.model.reservations[reservation]
        available = self.model.events[mine.event].available
        self.try_increase(reservation, mine.owner, available + beyond)

    def try_increase(self, reservation: int, actor: str, quantity: int) -> None:
        mine = self.model.reservations[reservation]
        expected = (
            self.change_refusal(reservation, actor, quantity)
            or refusal_for_adding(self.model, mine.event, mine.owner, quantity)
            or "ok"
        )
        outcome, _ = self.attempt(
            lambda s: booking.increase(
                s, reservation_id=reservation, actor=Actor(actor), quantity=quantity
            )
        )
        assert outcome == expected
        if outcome == "ok":
            mine.quantity += quantity
            self.model.events[mine.event].available -= quantity

    @rule(reservation=reservations_made, actor=st.sampled_from(CUSTOMERS), quantity=quantities)
    def decrease(self, reservation: int, actor: str, quantity: int) -> None:
        mine = self.model.reservations[reservation]
        expected = self.change_refusal(reservation, actor, quantity) or (
            "InvalidQuantity" if quantity >= mine.quantity else "ok"
        )
        outcome, _ = self.attempt(
            lambda s: booking.decrease(
                s, reservation_id=reservation, actor=Actor(actor), quantity=quantity
            )
        )
        assert outcome == expected
        if outcome == "ok":
            mine.quantity -= quantity
            self.model.events[mine.event].available += quantity

    @rule(reservation=reservations_made, actor=st.sampled_from([*CUSTOMERS, *STAFF]))
    def cancel(self, reservation: int, actor: str) -> None:
        mine = self.model.reservations[reservation]
        who = STAFF.get(actor, Actor(actor))
        expected = (
            "NotFound"
            if actor != mine.owner and not self.model.manages(actor, mine.event)
            else "ok"
            if mine.cancelled
            else "EventStarted"
            if self.model.events[mine.event].started
            else "ok"
        )
        outcome, _ = self.attempt(
            lambda s: booking.cancel(s, reservation_id=reservation, actor=who)
        )
        assert outcome == expected
        if outcome == "ok" and not mine.cancelled:
            mine.cancelled = True
            self.model.events[mine.event].available += mine.quantity

    def event_change_refusal(self, event: int, staff: str) -> str | None:
        state = self.model.events[event]
        return (
            "NotFound"
            if not self.model.manages(staff, event)
            else "EventCancelled"
            if state.cancelled
            else "EventStarted"
            if state.started
            else None
        )

    @rule(event=events_made, staff=st.sampled_from(list(STAFF)), capacity=st.integers(0, 12))
    def change_capacity(self, event: int, staff: str, capacity: int) -> None:
        state = self.model.events[event]
        reserved = state.capacity - state.available
        expected = self.event_change_refusal(event, staff) or (
            "InvalidEvent" if capacity < reserved else "ok"
        )
        changes = events.EventChanges(capacity=capacity)
        outcome, _ = self.attempt(lambda s: events.update_event(s, event, changes, STAFF[staff]))
        assert outcome == expected
        if outcome == "ok":
            state.available += capacity - state.capacity
            state.capacity = capacity

    @rule(
        event=events_made, staff=st.sampled_from(list(STAFF)), limit=st.none() | st.integers(1, 4)
    )
    def change_limit(self, event: int, staff: str, limit: int | None) -> None:
        expected = self.event_change_refusal(event, staff) or "ok"
        changes = events.EventChanges(max_tickets_per_customer=limit)
        outcome, _ = self.attempt(lambda s: events.update_event(s, event, changes, STAFF[staff]))
        assert outcome == expected
        if outcome == "ok":
            self.model.events[event].limit = limit

    @rule(event=events_made, staff=st.sampled_from(list(STAFF)), now=seldom)
    def cancel_event(self, event: int, staff: str, now: bool) -> None:
        if not now:
            return
        state = self.model.events[event]
        expected = (
            "NotFound"
            if not self.model.manages(staff, event)
            else "ok"
            if state.cancelled
            else "EventStarted"
            if state.started
            else "ok"
        )
        outcome, _ = self.attempt(lambda s: events.cancel_event(s, event, STAFF[staff]))
        assert outcome == expected
        if outcome == "ok" and not state.cancelled:
            state.cancelled, state.available = True, state.capacity
            for mine in self.model.reservations.values():
                if mine.event == event:
                    mine.cancelled = True

    @rule(event=events_made, now=seldom)
    def time_passes_and_the_event_starts(self, event: int, now: bool) -> None:
        if not now:
            return
        with self.engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE event SET starts_at = now() - :ago WHERE id = :id"),
                {"ago": timedelta(minutes=1), "id": event},
            )
        self.model.events[event].started = True

    @invariant()
    def database_matches_the_model(self) -> None:
        with self.engine.connect() as connection:
            stored_events = {
                row.id: (
                    row.capacity,
                    row.tickets_available,
                    row.max_tickets_per_customer,
                    row.status == "CANCELLED",
                )
                for row in connection.execute(sa.text("SELECT * FROM event"))
            }
            stored_reservations = {
                row.id: (row.event_id, row.customer_id, row.quantity, row.status == "CANCELLED")
                for row in connection.execute(sa.text("SELECT * FROM reservation"))
            }
        assert stored_events == {
            key: (e.capacity, e.available, e.limit, e.cancelled)
            for key, e in self.model.events.items()
        }
        assert stored_reservations == {
            key: (r.event, r.owner, r.quantity, r.cancelled)
            for key, r in self.model.reservations.items()
        }
        assert invariant_violations(self.engine) == []

    @invariant()
    def history_names_each_actors_role(self) -> None:
        """A customer acting on their own reservation, the event's organizer or an admin."""
        with self.engine.connect() as connection:
            lines = connection.execute(
                sa.text(
                    "SELECT change.actor, change.actor_role, reservation.customer_id,"
                    " event.owner_id FROM reservation_change AS change"
                    " JOIN reservation ON reservation.id = change.reservation_id"
                    " JOIN event ON event.id = reservation.event_id"
                )
            ).all()
        for actor, role, customer, organizer in lines:
            expected = (
                "CUSTOMER"
                if actor == customer
                else "ORGANIZER"
                if actor == organizer
                else "ADMIN"
                if actor == "ada"
                else None
            )
            assert role == expected, (actor, role, customer, organizer)


TestBookingRules = BookingMachine.TestCase
TestBookingRules.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _machine_engine(engine: Engine) -> None:
    BookingMachine.engine = engine
