"""Serving the waitlist: tickets freed on an event go first to the customers waiting for them.

Every path that frees tickets (cancel, DECREASE, expiry, more capacity) calls `promote` in
its own transaction, under the event's lock, so a bystander can never take tickets that
someone waiting could have had: only tickets no waiting entry can use stay on public sale.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ticketing.domain import clock, rules
from ticketing.domain.inventory import offer, update_event_row
from ticketing.domain.models import CustomerHold, Event, WaitlistEntry, WaitlistStatus

# How long an offer holds its tickets on an event without a hold time of its own.
OFFER_MINUTES_WITHOUT_HOLD = 30
_BATCH = 100


def promote(session: Session, event: Event) -> Event:
    """Offer the event's available tickets to its waiting entries in the order they joined,
    skipping any whose whole quantity doesn't fit or that would take its customer over the
    limit. The caller holds the event's lock and has checked that it is on sale and not
    started. Returns the event after."""
    available = event.tickets_available
    minutes = event.hold_minutes or OFFER_MINUTES_WITHOUT_HOLD
    offered = 0
    held: dict[str, int] = {}  # customers' holds, as offers in this round add to them
    after_id = 0
    while available > 0:
        candidates = session.exec(
            select(WaitlistEntry, sa.func.coalesce(CustomerHold.tickets, 0))
            .outerjoin(
                CustomerHold,
                (col(CustomerHold.event_id) == col(WaitlistEntry.event_id))
                & (col(CustomerHold.customer_id) == col(WaitlistEntry.customer_id)),
            )
            .where(
                col(WaitlistEntry.event_id) == event.id,
                col(WaitlistEntry.status) == WaitlistStatus.WAITING,
                col(WaitlistEntry.quantity) <= available,
                col(WaitlistEntry.id) > after_id,
            )
            .order_by(col(WaitlistEntry.id))
            .limit(_BATCH)
        ).all()
        for entry, tickets in candidates:
            assert entry.id is not None
            after_id = entry.id
            customer_holds = held.setdefault(entry.customer_id, tickets)
            if entry.quantity > available or rules.exceeds_limit(
                customer_holds, entry.quantity, event.max_tickets_per_customer
            ):
                continue
            offer(session, event, entry, minutes)
            held[entry.customer_id] += entry.quantity
            available -= entry.quantity
            offered += entry.quantity
        if len(candidates) < _BATCH:
            break
    if offered == 0:
        return event
    return update_event_row(
        session,
        event.id,
        {"tickets_available": col(Event.tickets_available) - offered, "updated_at": clock.now()},
    )


def promote_each(session: Session, events: Sequence[Event]) -> list[Event]:
    """`promote` for each of several locked events, with one query to skip those that nobody
    waits for. Returns the events after, in the same order."""
    if not events:
        return []
    waited_for = set(
        session.exec(
            select(WaitlistEntry.event_id)
            .where(
                col(WaitlistEntry.event_id).in_([event.id for event in events]),
                col(WaitlistEntry.status) == WaitlistStatus.WAITING,
            )
            .distinct()
        ).all()
    )
    return [promote(session, event) if event.id in waited_for else event for event in events]
