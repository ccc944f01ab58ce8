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

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlalchemy.sql.util import ClauseAdapter
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from ticketing.domain import promotion, rules
from ticketing.domain.errors import NotFound
from ticketing.domain.inventory import expired_hold, has_expired_holds, release_expired
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


def events_with_expired_holds(limit: int) -> SelectOfScalar[int]:
    """The IDs of events with holds that ran out, at most `limit` of them."""
    return select(Reservation.event_id).where(expired_hold).distinct().limit(limit)


def lock_expired_events(session: Session, event_ids: Sequence[int]) -> int:
    """Lock the events (ones whose holds ran out) and settle them as taking each lock does, in
    a few statements whatever their number: the sweep's bulk path. It locks in id order and
    skips events locked now (their holder settles them, or `expiry.settle` waits for them), so
    sweeps in several processes share the work instead of queueing on the same rows. Returns
    how many events it locked."""
    locked = session.exec(
        select(Event, rules.refusal())
        .where(col(Event.id).in_(event_ids))
        .order_by(col(Event.id))
        .with_for_update(of=Event, skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    if locked:
        _settle(session, list(locked))
    return len(locked)


def _lock_event_where(
    session: Session, condition: sa.ColumnElement[bool], taking: int
) -> LockedEvent | None:
    # PostgreSQL computes a locking SELECT's columns before it waits for the lock; while a
    # request waits, holds run out and the event may start. So the row is locked in a
    # subquery, and the columns that depend on the time are computed above it, once the lock
    # is ours. (Their subqueries still read the statement's snapshot, from before the wait:
    # a hold made meanwhile can't run out before the wait ends, as waits are far shorter than
    # the shortest hold.)
    locked = select(Event).where(condition).with_for_update(of=Event).subquery("locked")
    after_the_wait = ClauseAdapter(locked).traverse
    found = session.exec(
        select(
            aliased(Event, locked),
            after_the_wait(rules.refusal(taking=taking)),
            has_expired_holds(locked.c.id),
        ).execution_options(populate_existing=True)
    ).one_or_none()
    if found is None:
        return None
    event, refusal, holds_ran_out = found
    if holds_ran_out:
        [event] = _settle(session, [(event, refusal)])
        refusal = session.scalar(
            select(rules.refusal(taking=taking)).where(col(Event.id) == event.id)
        )
    return LockedEvent(event, refusal, taking)


def _settle(session: Session, locked: list[tuple[Event, str | None]]) -> list[Event]:
    """Release the locked events' expired holds and offer the freed tickets to their waitlists
    (unless cancelled or started), given each event with its refusal. The events after."""
    refusals = {event.id: refusal for event, refusal in locked}
    released = release_expired(session, [event.id for event, _ in locked if event.id is not None])
    closed = (rules.Refusal.EVENT_CANCELLED, rules.Refusal.EVENT_STARTED)
    promoted = promotion.promote_each(
        session, [event for event in released if refusals[event.id] not in closed]
    )
    after = {event.id: event for event in [*released, *promoted]}
    return [after.get(event.id, event) for event, _ in locked]
