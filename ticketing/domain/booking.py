"""Reserve, increase, decrease, cancel and confirm: the booking operations.

Each returns an `Operation` that runs in the caller's transaction (see `Database.transaction`)
and raises a `DomainError` to refuse, which rolls everything back. The rules they share (the
refusal order, the per-customer limit) live in `rules`; the event-row lock in `locking`; the
statements in `inventory`. Every operation that frees tickets offers them to the waitlist
(`promotion`) in the same transaction.
"""

from __future__ import annotations

from functools import partial

from sqlmodel import Session

from ticketing.domain import promotion, rules
from ticketing.domain.actors import Actor
from ticketing.domain.errors import DomainError, InvalidQuantity, NotFound
from ticketing.domain.inventory import (
    Asked,
    Booking,
    change_tickets,
    confirm_in_one_statement,
    take_in_one_statement,
    take_together,
)
from ticketing.domain.locking import LockedReservation, lock_event, lock_reservation
from ticketing.domain.models import ChangeKind, ReservationStatus
from ticketing.domain.operation import Operation, Together


def reserve(*, event_id: int, actor: Actor, quantity: int) -> Operation[Booking]:
    """A HELD reservation on an event with a hold time, else an ACTIVE one.

    Most attempts are settled by one statement, which may run with each statement committing
    on its own: the hot event's row then stays locked only while PostgreSQL runs it. When
    that statement finds no tickets, the event not on sale or holds that ran out, the
    transaction decides under the event's lock, after releasing expired holds. Concurrent
    reservations of one event may instead be decided together, in one statement."""
    customer_id = actor.customer_id
    return Operation(
        in_transaction=partial(_reserve_locked, event_id, customer_id, quantity),
        on_its_own=partial(_reserve_at_once, event_id, customer_id, quantity),
        contends_for=("event", event_id),
        # Concurrent reservations of the event may be decided in one statement (see
        # `inventory.take_together`), those left undecided then alone; an invalid quantity
        # is refused alone.
        together=Together(
            ("event", event_id),
            Asked(customer_id, quantity),
            partial(_reserve_together, event_id),
        )
        if quantity >= 1
        else None,
    )


def _reserve_together(
    event_id: int, session: Session, asked: list[Asked]
) -> list[Booking | DomainError] | None:
    return take_together(session, event_id=event_id, asked=asked)


def _reserve_at_once(
    event_id: int, customer_id: str, quantity: int, session: Session
) -> Booking | None:
    rules.require_positive(quantity)
    try:
        with rules.customer_limit(
            session, event_id=event_id, customer_id=customer_id, savepoint=False
        ):
            return take_in_one_statement(
                session, event_id=event_id, customer_id=customer_id, quantity=quantity
            )
    except rules.LimitLifted:
        return None


def _reserve_locked(event_id: int, customer_id: str, quantity: int, session: Session) -> Booking:
    rules.require_positive(quantity)
    # Tried again only when a hold ran out or the event started since the lock read them:
    # the next lock releases that hold, or refuses.
    while True:
        lock_event(session, event_id, taking=quantity).refuse()
        # A failed statement aborts a transaction: a savepoint keeps it usable for the reads
        # that explain the refusal.
        with rules.customer_limit(
            session, event_id=event_id, customer_id=customer_id, savepoint=True
        ):
            booked = take_in_one_statement(
                session, event_id=event_id, customer_id=customer_id, quantity=quantity
            )
        if booked is not None:
            return booked


def increase(*, reservation_id: int, actor: Actor, quantity: int) -> Operation[Booking]:
    def work(session: Session) -> Booking:
        rules.require_positive(quantity)
        locked = _lock_own(session, reservation_id, actor, taking=quantity)
        locked.refuse()
        assert locked.event.id is not None
        with rules.customer_limit(
            session, event_id=locked.event.id, customer_id=actor.customer_id, savepoint=True
        ):
            return change_tickets(
                session, locked.event, locked.reservation, ChangeKind.INCREASED, quantity, actor
            )

    return Operation(work)


def decrease(*, reservation_id: int, actor: Actor, quantity: int) -> Operation[Booking]:
    def work(session: Session) -> Booking:
        rules.require_positive(quantity)
        locked = _lock_own(session, reservation_id, actor)
        locked.refuse()
        held = locked.reservation.quantity
        if quantity >= held:
            raise InvalidQuantity(
                min=1,
                max=held - 1,
                reason=(
                    f"A decrease must leave at least one ticket (the reservation holds {held}); "
                    "cancel the reservation to release them all."
                ),
            )
        return _give_back(session, locked, ChangeKind.DECREASED, quantity, actor)

    return Operation(work)


def cancel(*, reservation_id: int, actor: Actor) -> Operation[Booking]:
    """Release the reservation's tickets. Cancelling it again returns it unchanged."""

    def work(session: Session) -> Booking:
        locked = lock_reservation(session, reservation_id)
        reservation, event = locked.reservation, locked.event
        if not actor.may_access(reservation, event):
            raise NotFound("Reservation", reservation_id)
        if reservation.status == ReservationStatus.CANCELLED:
            return Booking(reservation, event)
        locked.refuse()
        return _give_back(session, locked, ChangeKind.CANCELLED, reservation.quantity, actor)

    return Operation(work)


def confirm(*, reservation_id: int, actor: Actor) -> Operation[Booking]:
    """Make a HELD reservation final. Its customer may, or a checkout (payment backend).
    Confirming an ACTIVE reservation returns it unchanged.

    One statement when it succeeds, which doesn't lock the event's row (no tickets move);
    anything else is decided under the event's lock."""

    def at_once(session: Session) -> Booking | None:
        return confirm_in_one_statement(session, reservation_id, actor)

    def locked(session: Session) -> Booking:
        # Tried again only when the hold ran out or the event started since the lock read
        # them: the next round refuses it.
        while True:
            found = lock_reservation(session, reservation_id)
            reservation, event = found.reservation, found.event
            if not actor.may_confirm(reservation):
                raise NotFound("Reservation", reservation_id)
            if reservation.status == ReservationStatus.ACTIVE:
                return Booking(reservation, event)
            found.refuse()
            confirmed = confirm_in_one_statement(session, reservation_id, actor)
            if confirmed is not None:
                return confirmed

    return Operation(
        in_transaction=lambda session: at_once(session) or locked(session), on_its_own=at_once
    )


def _give_back(
    session: Session, locked: LockedReservation, kind: ChangeKind, quantity: int, actor: Actor
) -> Booking:
    done = change_tickets(session, locked.event, locked.reservation, kind, quantity, actor)
    return Booking(done.reservation, promotion.promote(session, done.event))


def _lock_own(
    session: Session, reservation_id: int, actor: Actor, *, taking: int = 0
) -> LockedReservation:
    """Only its customer may change a reservation's quantity (organizers may only cancel it);
    others get NotFound."""
    locked = lock_reservation(session, reservation_id, taking=taking)
    if locked.reservation.customer_id != actor.customer_id:
        raise NotFound("Reservation", reservation_id)
    return locked
