"""The statements that lock, take and give back an event's tickets.

Concurrency: all changes to an event's tickets go through its `event` row, which each
operation locks before it touches a customer's hold or a reservation. One lock order
everywhere means no deadlocks, and it serialises every check that spans rows (the
per-customer limit) with the writes it guards. Each lock also reads the refusal that
applies (see `rules.refusal`) at the moment it is granted. The CHECK constraints on `event`,
`reservation` and `customer_hold` stay as a backstop against any bug that slips past the
rules.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import Select

from ticketing.domain import clock, rules
from ticketing.domain.actors import Actor
from ticketing.domain.errors import NotFound
from ticketing.domain.models import (
    ActorRole,
    ChangeKind,
    CustomerHold,
    Event,
    Reservation,
    ReservationChange,
    ReservationStatus,
)


@dataclass(frozen=True)
class Booking:
    """A reservation after an operation, and its event showing the new availability."""

    reservation: Reservation
    event: Event


@dataclass(frozen=True)
class LockedEvent:
    event: Event
    # The first refusal for taking `taking` more of its tickets, if any.
    refusal: str | None
    taking: int

    def refuse(self) -> None:
        rules.refuse(self.refusal, self.event, taking=self.taking)


@dataclass(frozen=True)
class LockedReservation:
    event: Event
    reservation: Reservation
    # The first refusal for changing the reservation by taking `taking` more tickets, if any.
    refusal: str | None
    taking: int

    def refuse(self) -> None:
        rules.refuse(self.refusal, self.event, taking=self.taking)


def lock_event(session: Session, event_id: int, *, taking: int = 0) -> LockedEvent:
    found = _lock_event_where(session, col(Event.id) == event_id, taking)
    if found is None:
        raise NotFound("Event", event_id)
    return found


def lock_reservation(
    session: Session, reservation_id: int, *, taking: int = 0
) -> LockedReservation:
    """Lock the reservation's event, then read and lock the reservation under that lock."""
    event_of_reservation = (
        select(Reservation.event_id).where(col(Reservation.id) == reservation_id).scalar_subquery()
    )
    locked = _lock_event_where(session, col(Event.id) == event_of_reservation, taking)
    if locked is None:
        raise NotFound("Reservation", reservation_id)
    # A fresh statement after the lock: it sees every change committed before we got it.
    reservation, refusal = session.exec(
        select(Reservation, rules.refusal(taking=taking, of_reservation=True))
        .join(Event, col(Event.id) == col(Reservation.event_id))
        .where(col(Reservation.id) == reservation_id)
        .with_for_update(of=Reservation)
        .execution_options(populate_existing=True)
    ).one()
    return LockedReservation(locked.event, reservation, refusal, taking)


def _lock_event_where(
    session: Session, condition: sa.ColumnElement[bool], taking: int
) -> LockedEvent | None:
    found = session.exec(
        select(Event, rules.refusal(taking=taking))
        .where(condition)
        .with_for_update(of=Event)
        .execution_options(populate_existing=True)
    ).one_or_none()
    return None if found is None else LockedEvent(found[0], found[1], taking)


def take_in_one_statement(
    session: Session, *, event_id: int, customer_id: str, quantity: int
) -> Booking | None:
    """Take the tickets, add them to the customer's hold, create the reservation and its
    history line, all in one statement: atomic even outside a transaction, and the event's
    row stays locked only while PostgreSQL runs it.

    None if a rule refuses it (see `rules.refusal`). Over the customer's limit, the statement
    fails on the `hold_within_limit` constraint (see `rules.customer_limit`)."""
    statement = getattr(_per_thread, "take", None)
    if statement is None:
        statement = _per_thread.take = _take_statement()
    found = session.exec(
        statement,
        params={"event_id": event_id, "customer_id": customer_id, "quantity": quantity},
    ).one_or_none()
    return None if found is None else Booking(reservation=found[1], event=found[0])


def _take_statement() -> Select[Event, Reservation]:
    """The parameters are `event_id`, `customer_id` and `quantity`."""
    event_id = sa.bindparam("event_id", type_=sa.BigInteger)
    customer_id = sa.bindparam("customer_id", type_=sa.Text)
    quantity = sa.bindparam("quantity", type_=sa.Integer)
    taken = (
        sa.update(Event)
        .where(col(Event.id) == event_id, rules.refusal(taking=quantity).is_(None))
        .values(tickets_available=col(Event.tickets_available) - quantity, updated_at=clock.now())
        .returning(*Event.__table__.c)  # type: ignore[attr-defined]
        .cte("taken")
    )
    limit = taken.c.max_tickets_per_customer
    hold = CustomerHold.__table__  # type: ignore[attr-defined]
    proposed = insert(CustomerHold).from_select(
        ["event_id", "customer_id", "tickets", "ticket_limit"],
        sa.select(taken.c.id, customer_id, quantity, limit),
    )
    # The upsert adds to the latest committed holding, waiting for a concurrent reservation by
    # the same customer; past the event's limit, its CHECK fails the whole statement.
    held = (
        proposed.on_conflict_do_update(
            index_elements=["event_id", "customer_id"],
            set_={
                "tickets": hold.c.tickets + proposed.excluded.tickets,
                "ticket_limit": proposed.excluded.ticket_limit,
            },
        )
        .returning(hold.c.tickets)
        .cte("held")
    )
    made = (
        insert(Reservation)
        .from_select(
            ["event_id", "customer_id", "quantity", "status"],
            sa.select(
                taken.c.id, customer_id, quantity, sa.literal(ReservationStatus.ACTIVE.value)
            ).select_from(taken.join(held, sa.true())),
        )
        .returning(*Reservation.__table__.c)  # type: ignore[attr-defined]
        .cte("made")
    )
    logged = (
        insert(ReservationChange)
        .from_select(
            ["reservation_id", "kind", "quantity", "actor", "actor_role"],
            sa.select(
                made.c.id,
                sa.literal(ChangeKind.CREATED.value),
                made.c.quantity,
                made.c.customer_id,
                sa.literal(ActorRole.CUSTOMER.value),
            ),
        )
        .cte("logged")
    )
    return (
        select(aliased(Event, taken), aliased(Reservation, made))
        .select_from(taken)
        .join(made, sa.true())
        .add_cte(logged)
        .execution_options(populate_existing=True)
    )


# Built once per thread, not once per process: SQLAlchemy completes a statement lazily on its
# first use, which is not thread-safe. A shared one, first run by many threads at once, was
# seen to render wrong SQL (the event table instead of the CTE) and keep it in its cache.
_per_thread = threading.local()


def change_tickets(
    session: Session, locked: LockedReservation, kind: ChangeKind, quantity: int, actor: Actor
) -> Booking:
    """Write one change to a locked reservation, its event and its customer's hold, and its
    history line. Adding tickets sets the hold's limit to the event's, so its CHECK enforces
    the limit (see `rules.customer_limit`)."""
    event, reservation = locked.event, locked.reservation
    taken = quantity if kind == ChangeKind.INCREASED else -quantity
    hold_values: dict[str, object] = {"tickets": col(CustomerHold.tickets) + taken}
    if kind == ChangeKind.INCREASED:
        hold_values["ticket_limit"] = event.max_tickets_per_customer
    session.exec(
        sa.update(CustomerHold)
        .where(
            col(CustomerHold.event_id) == event.id,
            col(CustomerHold.customer_id) == reservation.customer_id,
        )
        .values(hold_values)
    )
    reservation_values: dict[str, object] = {"updated_at": clock.now()}
    if kind == ChangeKind.CANCELLED:
        reservation_values |= {"status": ReservationStatus.CANCELLED, "cancelled_at": clock.now()}
    else:
        reservation_values["quantity"] = col(Reservation.quantity) + taken
    updated_reservation = (
        session.exec(
            sa.update(Reservation)
            .where(col(Reservation.id) == reservation.id)
            .values(reservation_values)
            .returning(Reservation)
            .execution_options(populate_existing=True)
        )
        .scalars()
        .one()
    )
    updated_event = update_event_row(
        session,
        event.id,
        {"tickets_available": col(Event.tickets_available) - taken, "updated_at": clock.now()},
    )
    assert reservation.id is not None
    session.add(
        ReservationChange(
            reservation_id=reservation.id,
            kind=kind,
            quantity=quantity,
            actor=actor.customer_id,
            actor_role=actor.role_toward(reservation, event),
        )
    )
    session.flush()
    return Booking(updated_reservation, updated_event)


def update_event_row(session: Session, event_id: int | None, values: dict[str, object]) -> Event:
    updated = session.exec(
        sa.update(Event)
        .where(col(Event.id) == event_id)
        .values(values)
        .returning(Event)
        .execution_options(populate_existing=True)
    )
    event: Event = updated.scalars().one()
    return event
