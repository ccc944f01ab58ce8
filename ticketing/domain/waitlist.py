"""Joining and leaving an event's waitlist. Serving it is `promotion`'s work."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ticketing.domain import clock, rules
from ticketing.domain.actors import Actor
from ticketing.domain.errors import (
    CustomerLimitReached,
    InvalidQuantity,
    NotFound,
    TicketsAvailable,
)
from ticketing.domain.locking import lock_event
from ticketing.domain.models import Event, WaitlistEntry, WaitlistStatus
from ticketing.domain.operation import Operation


@dataclass(frozen=True)
class Placement:
    """A waitlist entry after an operation, and its event."""

    entry: WaitlistEntry
    event: Event


def join(*, event_id: int, actor: Actor, quantity: int) -> Operation[Placement]:
    """Wait for `quantity` tickets of a sold-out event. Refused while enough tickets are on
    sale (reserve them instead), and when the customer's tickets and these would pass the
    event's limit."""

    def work(session: Session) -> Placement:
        rules.require_positive(quantity)
        locked = lock_event(session, event_id)
        locked.refuse()
        event = locked.event
        if quantity > event.capacity:
            raise InvalidQuantity(
                min=1,
                max=event.capacity,
                reason=f"The event has {event.capacity} tickets in all; {quantity} can't be "
                "waited for.",
            )
        held = rules.held(session, event_id, actor.customer_id)
        limit = event.max_tickets_per_customer
        if rules.exceeds_limit(held, quantity, limit):
            assert limit is not None
            raise CustomerLimitReached(limit=limit, held=held)
        if event.tickets_available >= quantity:
            raise TicketsAvailable(available=event.tickets_available)
        entry = WaitlistEntry(event_id=event_id, customer_id=actor.customer_id, quantity=quantity)
        session.add(entry)
        session.flush()
        session.refresh(entry)
        return Placement(entry, event)

    return Operation(work, contends_for=("event", event_id))


def leave(*, entry_id: int, actor: Actor) -> Operation[Placement]:
    """Stop waiting. An entry that is no longer waiting (served, left or closed) is returned
    unchanged."""

    def work(session: Session) -> Placement:
        event_id = session.scalar(
            select(WaitlistEntry.event_id).where(col(WaitlistEntry.id) == entry_id)
        )
        if event_id is None:
            raise NotFound("WaitlistEntry", entry_id)
        event = lock_event(session, event_id).event
        entry = session.exec(
            select(WaitlistEntry)
            .where(col(WaitlistEntry.id) == entry_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        if entry.customer_id != actor.customer_id:
            raise NotFound("WaitlistEntry", entry_id)
        if entry.status == WaitlistStatus.WAITING:
            entry = (
                session.exec(
                    sa.update(WaitlistEntry)
                    .where(col(WaitlistEntry.id) == entry_id)
                    .values(status=WaitlistStatus.LEFT, updated_at=clock.now())
                    .returning(WaitlistEntry)
                    .execution_options(populate_existing=True)
                )
                .scalars()
                .one()
            )
        return Placement(entry, event)

    return Operation(work)


def close(session: Session, event_id: int) -> None:
    """Close the waiting entries of a cancelled event. Under the event's lock."""
    session.exec(
        sa.update(WaitlistEntry)
        .where(
            col(WaitlistEntry.event_id) == event_id,
            col(WaitlistEntry.status) == WaitlistStatus.WAITING,
        )
        .values(status=WaitlistStatus.CLOSED, updated_at=clock.now())
    )
