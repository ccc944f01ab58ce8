"""The booking rules every path shares: the one order of refusals, and the per-customer limit.

The refusal order is one SQL expression: the reserve statement takes tickets only where it is
null, and every locked path reads it beside the rows it locks, so a refusal names the same
reason whichever path met it.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ticketing.domain import clock
from ticketing.domain.errors import (
    CustomerLimitReached,
    DomainError,
    EventCancelled,
    EventStarted,
    HoldExpired,
    InvalidQuantity,
    NotEnoughTickets,
    ReservationCancelled,
)
from ticketing.domain.models import CustomerHold, Event, EventStatus, Reservation, ReservationStatus


class Refusal(enum.StrEnum):
    """Why tickets can't be booked or changed, in the order they are checked. The event's
    state comes first: it explains why its reservations were cancelled."""

    EVENT_CANCELLED = "EVENT_CANCELLED"
    RESERVATION_CANCELLED = "RESERVATION_CANCELLED"
    HOLD_EXPIRED = "HOLD_EXPIRED"
    EVENT_STARTED = "EVENT_STARTED"
    NOT_ENOUGH_TICKETS = "NOT_ENOUGH_TICKETS"
    # Last: a reservation statement takes the tickets, then the customer's hold refuses.
    CUSTOMER_LIMIT_REACHED = "CUSTOMER_LIMIT_REACHED"


def refusal(
    *, taking: int | sa.ColumnElement[int] = 0, of_reservation: bool = False
) -> sa.ColumnElement[str | None]:
    """The first refusal that applies to taking `taking` more tickets of an `event` row (and,
    with `of_reservation`, changing a `reservation` row), else null."""
    reasons: list[tuple[sa.ColumnElement[bool], str]] = [
        (col(Event.status) == EventStatus.CANCELLED, Refusal.EVENT_CANCELLED)
    ]
    if of_reservation:
        reasons += [
            (col(Reservation.status) == ReservationStatus.CANCELLED, Refusal.RESERVATION_CANCELLED),
            (col(Reservation.status) == ReservationStatus.EXPIRED, Refusal.HOLD_EXPIRED),
        ]
    reasons += [
        (col(Event.starts_at) <= clock.now(), Refusal.EVENT_STARTED),
        (col(Event.tickets_available) < taking, Refusal.NOT_ENOUGH_TICKETS),
    ]
    return sa.case(*reasons, else_=sa.null())


def reservation_refusal(
    *, taking: sa.ColumnElement[int], held: sa.ColumnElement[int]
) -> sa.ColumnElement[str | None]:
    """The first refusal for a new reservation of `taking` tickets of an `event` row by a
    customer who holds `held`: `refusal()`'s, then the per-customer limit, the order in
    which the one-statement reservation meets them. For statements that decide many
    reservations at once, where the `hold_within_limit` CHECK can't refuse one alone."""
    limit = col(Event.max_tickets_per_customer)
    # Only reached with tickets enough: `held + taking` can't pass the capacity (an int).
    over_limit = sa.and_(limit.is_not(None), held + taking > limit)
    return sa.func.coalesce(
        refusal(taking=taking),
        sa.case((over_limit, Refusal.CUSTOMER_LIMIT_REACHED.value), else_=sa.null()),
        type_=sa.String,
    )


def refusal_error(
    reason: str,
    event: Event,
    *,
    taking: int = 0,
    reservation: Reservation | None = None,
    available: int | None = None,
    held: int = 0,
) -> DomainError:
    """The error for the refusal that `refusal()` or `reservation_refusal()` named.
    `available`: the tickets there were when it was decided, if not the event's now;
    `held`: the customer's tickets then (for the limit)."""
    if reason == Refusal.HOLD_EXPIRED:
        assert reservation is not None
        assert reservation.expires_at is not None
        return HoldExpired(expired_at=reservation.expires_at)
    if reason == Refusal.CUSTOMER_LIMIT_REACHED:
        assert event.max_tickets_per_customer is not None
        return CustomerLimitReached(limit=event.max_tickets_per_customer, held=held)
    errors: dict[str, DomainError] = {
        Refusal.EVENT_CANCELLED: EventCancelled(),
        Refusal.RESERVATION_CANCELLED: ReservationCancelled(),
        Refusal.EVENT_STARTED: EventStarted(),
        Refusal.NOT_ENOUGH_TICKETS: NotEnoughTickets(
            requested=taking,
            available=event.tickets_available if available is None else available,
        ),
    }
    return errors[reason]


def refuse(
    reason: str | None, event: Event, *, taking: int = 0, reservation: Reservation | None = None
) -> None:
    """Raise the refusal that `refusal()` named, if any."""
    if reason is not None:
        raise refusal_error(reason, event, taking=taking, reservation=reservation)


def require_positive(quantity: int) -> None:
    if quantity < 1:
        raise InvalidQuantity(min=1, max=None)


class LimitLifted(Exception):
    """The limit that refused a change was lifted before the refusal could be explained."""


@contextlib.contextmanager
def customer_limit(
    session: Session, *, event_id: int, customer_id: str, savepoint: bool
) -> Iterator[None]:
    """Enforces the per-customer limit around a write that adds to a customer's hold.

    The limit has one mechanism: the `hold_within_limit` CHECK on the customer's row in
    `customer_hold`, which every write adding tickets sets to the event's current limit. That
    row is upserted in the same statement that takes tickets, so it sees (and waits for)
    concurrent bookings by the same customer. A violation becomes CustomerLimitReached.
    `savepoint`: keep the caller's transaction usable after the failed statement."""
    try:
        with session.begin_nested() if savepoint else contextlib.nullcontext():
            yield
    except sa.exc.IntegrityError as error:
        diagnostics = getattr(error.orig, "diag", None)
        if diagnostics is None or diagnostics.constraint_name != "hold_within_limit":
            raise
        limit = session.scalar(
            select(Event.max_tickets_per_customer).where(col(Event.id) == event_id)
        )
        if limit is None:
            raise LimitLifted() from None
        raise CustomerLimitReached(limit=limit, held=held(session, event_id, customer_id)) from None


def exceeds_limit(held: int, adding: int, limit: int | None) -> bool:
    """The limit's rule, for decisions made under the event's lock that add no tickets
    themselves (joining a waitlist, choosing whom to offer freed tickets): the comparison
    that the `hold_within_limit` CHECK makes when tickets are added."""
    return limit is not None and held + adding > limit


def held(session: Session, event_id: int, customer_id: str) -> int:
    """The tickets a customer holds for an event, over all their HELD and ACTIVE
    reservations of it."""
    tickets = session.scalar(
        select(CustomerHold.tickets).where(
            col(CustomerHold.event_id) == event_id, col(CustomerHold.customer_id) == customer_id
        )
    )
    return tickets or 0
