"""Locking an event's row: the first lock of every change to its inventory.

All changes to an event's tickets go through its `event` row, which each operation locks
before it touches a customer's hold, a reservation or a waitlist entry. One lock order
everywhere means no deadlocks, and it serialises every check that spans rows (the
per-customer limit, the waitlist's order) with the writes it guards.

Taking the lock settles the event first: holds that ran out are released and their tickets
offered to the waitlist, in the caller's transaction, so no path can see an expired hold as
held, and a reservation is never refused for tickets that expired holds would cover. (A
refusal rolls the release back with everything else; the sweeper, see `expiry`, commits it
within moments.) Each lock then reads the refusal that applies (see `rules.refusal`) as of
that moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ticketing.domain import promotion, rules
from ticketing.domain.errors import NotFound
from ticketing.domain.inventory import has_expired_holds, release_expired
from ticketing.domain.models import Event, Reservation


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
        rules.refuse(self.refusal, self.event, taking=self.taking, reservation=self.reservation)


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
        select(Event, rules.refusal(taking=taking), has_expired_holds)
        .where(condition)
        .with_for_update(of=Event)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if found is None:
        return None
    event, refusal, holds_ran_out = found
    if holds_ran_out:
        assert event.id is not None
        released = release_expired(session, event.id)
        if released is not None:
            event = released
            if refusal not in (rules.Refusal.EVENT_CANCELLED, rules.Refusal.EVENT_STARTED):
                event = promotion.promote(session, event)
        refusal = session.scalar(
            select(rules.refusal(taking=taking)).where(col(Event.id) == event.id)
        )
    return LockedEvent(event, refusal, taking)
