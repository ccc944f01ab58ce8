"""Reserve, increase, decrease and cancel: the booking operations.

Each returns an `Operation` that runs in the caller's transaction (see `Database.transaction`)
and raises a `DomainError` to refuse, which rolls everything back. The rules they share (the
refusal order, the per-customer limit) live in `rules`; the statements and the locking in
`inventory`.
"""

from __future__ import annotations

from functools import partial

from sqlmodel import Session

from ticketing.domain import rules
from ticketing.domain.actors import Actor
from ticketing.domain.errors import InvalidQuantity, NotFound
from ticketing.domain.inventory import (
    Booking,
    LockedReservation,
    change_tickets,
    lock_event,
    lock_reservation,
    take_in_one_statement,
)
from ticketing.domain.models import ChangeKind, ReservationStatus
from ticketing.domain.operation import Operation


def reserve(*, event_id: int, actor: Actor, quantity: int) -> Operation[Booking]:
    """One statement when it succeeds, so it may also run with each statement committing on
    its own; the hot event's row then stays locked only while PostgreSQL runs it."""
    work = partial(_reserve, event_id=event_id, customer_id=actor.customer_id, quantity=quantity)
    return Operation(
        in_transaction=partial(work, in_transaction=True),
        on_its_own=partial(work, in_transaction=False),
        contends_for=("event", event_id),
    )


def _reserve(
    session: Session, *, event_id: int, customer_id: str, quantity: int, in_transaction: bool
) -> Booking:
    rules.require_positive(quantity)
    # Tried again only when the tickets this statement missed were freed since (or the limit
    # that refused it was lifted): each round means someone else's change went through.
    while True:
        try:
            # A failed statement aborts a transaction: a savepoint keeps it usable for the
            # reads that explain the refusal.
            with rules.customer_limit(
                session, event_id=event_id, customer_id=customer_id, savepoint=in_transaction
            ):
                booked = take_in_one_statement(
                    session, event_id=event_id, customer_id=customer_id, quantity=quantity
                )
        except rules.LimitLifted:
            continue
        if booked is not None:
            return booked
        # Refused, or raced: the reason under the row lock (held to the end of a transaction;
        # on its own only for the read, so tickets freed since are taken by trying again).
        lock_event(session, event_id, taking=quantity).refuse()


def increase(*, reservation_id: int, actor: Actor, quantity: int) -> Operation[Booking]:
    def work(session: Session) -> Booking:
        rules.require_positive(quantity)
        locked = _lock_own(session, reservation_id, actor, taking=quantity)
        locked.refuse()
        assert locked.event.id is not None
        with rules.customer_limit(
            session, event_id=locked.event.id, customer_id=actor.customer_id, savepoint=True
        ):
            return change_tickets(session, locked, ChangeKind.INCREASED, quantity, actor)

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
        return change_tickets(session, locked, ChangeKind.DECREASED, quantity, actor)

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
        return change_tickets(session, locked, ChangeKind.CANCELLED, reservation.quantity, actor)

    return Operation(work)


def _lock_own(
    session: Session, reservation_id: int, actor: Actor, *, taking: int = 0
) -> LockedReservation:
    """Only its customer may change a reservation's quantity (organizers may only cancel it);
    others get NotFound."""
    locked = lock_reservation(session, reservation_id, taking=taking)
    if locked.reservation.customer_id != actor.customer_id:
        raise NotFound("Reservation", reservation_id)
    return locked
