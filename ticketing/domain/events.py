"""Organizer operations: create, change and cancel events. An event is managed by the
organizer who created it, and by admins (`Actor.manages`)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, get_args, get_type_hints

import sqlalchemy as sa
from sqlmodel import Session, col

from ticketing.domain import clock, promotion, waitlist
from ticketing.domain.actors import Actor
from ticketing.domain.errors import InvalidEvent, NotFound
from ticketing.domain.inventory import update_event_row
from ticketing.domain.locking import LockedEvent, lock_event
from ticketing.domain.models import (
    HOLDING,
    ChangeKind,
    CustomerHold,
    Event,
    EventStatus,
    Reservation,
    ReservationChange,
    ReservationStatus,
)
from ticketing.domain.operation import Operation
from ticketing.domain.times import to_utc

MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 10_000
MAX_YEARS_AHEAD = 50
MIN_HOLD_MINUTES, MAX_HOLD_MINUTES = 1, 120
# Characters that event text can't hold: the C0 and C1 controls (NUL, which PostgreSQL text
# can't store, terminal escapes, line breaks, ...), the Unicode line and paragraph separators,
# and the bidirectional embeddings, overrides and isolates, which reorder the text after them
# (Trojan Source, CVE-2021-42574). Bidi marks (LRM, RLM, ALM) and joiners stay allowed:
# mixed-direction text and emoji sequences need them, and they reorder nothing.
FORBIDDEN_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# A description may be laid out in lines, with tabs.
DESCRIPTION_LAYOUT = "\n\t"


@dataclass(frozen=True)
class EventDraft:
    """An event's editable fields: the one list of them."""

    name: str
    venue: str
    starts_at: datetime
    capacity: int
    description: str = ""
    ends_at: datetime | None = None
    max_tickets_per_customer: int | None = None
    hold_minutes: int | None = None


EDITABLE_FIELDS = tuple(field.name for field in fields(EventDraft))
# The fields that an update may set to null (clear); for the others null means no change.
CLEARABLE_FIELDS = frozenset(
    name for name, kind in get_type_hints(EventDraft).items() if type(None) in get_args(kind)
)


def create_event(draft: EventDraft, *, owner_id: str) -> Operation[Event]:
    def work(session: Session) -> Event:
        valid = _validated(draft, now=clock.read(session), changed=EDITABLE_FIELDS)
        event = Event(owner_id=owner_id, tickets_available=valid.capacity, **asdict(valid))
        session.add(event)
        session.flush()
        return event

    return Operation(work)


def update_event(event_id: int, changes: Mapping[str, Any], actor: Actor) -> Operation[Event]:
    """`changes`: new values of some of the `EDITABLE_FIELDS`."""
    unknown = changes.keys() - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Not editable event fields: {sorted(unknown)}")

    def work(session: Session) -> Event:
        locked = _lock_managed_event(session, event_id, actor)
        locked.refuse()
        event = locked.event
        current = EventDraft(**{name: getattr(event, name) for name in EDITABLE_FIELDS})
        draft = _validated(
            replace(current, **changes), now=clock.read(session), changed=changes.keys()
        )
        reserved = event.capacity - event.tickets_available
        if draft.capacity < reserved:
            raise InvalidEvent(
                "capacity", f"Capacity can't drop below the {reserved} tickets already reserved."
            )
        updated = update_event_row(
            session,
            event_id,
            asdict(draft)
            | {
                # Availability follows capacity; the reserved tickets stay reserved.
                "tickets_available": col(Event.tickets_available)
                + (draft.capacity - col(Event.capacity)),
                "updated_at": clock.now(),
            },
        )
        # More capacity, or a higher limit, may serve someone waiting.
        return promotion.promote(session, updated)

    return Operation(work)


def cancel_event(event_id: int, actor: Actor) -> Operation[Event]:
    """Cancel the event, every HELD and ACTIVE reservation of it and its waitlist.
    Cancelling again changes nothing."""

    def work(session: Session) -> Event:
        locked = _lock_managed_event(session, event_id, actor)
        event = locked.event
        if event.status == EventStatus.CANCELLED:
            return event
        locked.refuse()
        released = session.exec(
            sa.update(Reservation)
            .where(col(Reservation.event_id) == event_id, col(Reservation.status).in_(HOLDING))
            .values(
                status=ReservationStatus.CANCELLED,
                cancelled_at=clock.now(),
                expires_at=None,
                updated_at=clock.now(),
            )
            .returning(col(Reservation.id), col(Reservation.quantity))
        ).all()
        if released:
            session.exec(
                sa.update(CustomerHold)
                .where(col(CustomerHold.event_id) == event_id)
                .values(tickets=0)
            )
            session.exec(
                sa.insert(ReservationChange),
                params=[
                    {
                        "reservation_id": reservation_id,
                        "kind": ChangeKind.CANCELLED,
                        "quantity": quantity,
                        "actor": actor.customer_id,
                        "actor_role": actor.managing_role(event),
                    }
                    for reservation_id, quantity in released
                ],
            )
        waitlist.close(session, event_id)
        return update_event_row(
            session,
            event_id,
            {
                "status": EventStatus.CANCELLED,
                "tickets_available": col(Event.capacity),
                "updated_at": clock.now(),
            },
        )

    return Operation(work)


def _lock_managed_event(session: Session, event_id: int, actor: Actor) -> LockedEvent:
    """Lock the event if the actor manages it; to anyone else it doesn't exist. Checked under
    the lock, so the answer can't depend on a change racing with it."""
    locked = lock_event(session, event_id)
    if not actor.manages(locked.event):
        raise NotFound("Event", event_id)
    return locked


def _validated(draft: EventDraft, *, now: datetime, changed: Collection[str]) -> EventDraft:
    """`changed`: the fields given now. Text stored before a rule tightened is kept until it
    is changed, so such an event can still have its other fields updated."""
    name, venue = draft.name, draft.venue
    if "name" in changed:
        name = _valid_text("name", name.strip(), MAX_NAME_LENGTH)
    if "venue" in changed:
        venue = _valid_text("venue", venue.strip(), MAX_NAME_LENGTH)
    if "description" in changed:
        _valid_text(
            "description",
            draft.description,
            MAX_DESCRIPTION_LENGTH,
            required=False,
            allowed=DESCRIPTION_LAYOUT,
        )
    horizon = now + timedelta(days=365 * MAX_YEARS_AHEAD)
    starts_at = _valid_time("starts_at", draft.starts_at, horizon)
    ends_at = None if draft.ends_at is None else _valid_time("ends_at", draft.ends_at, horizon)
    if "starts_at" in changed and starts_at <= now:
        raise InvalidEvent("starts_at", "An event must start in the future.")
    if ends_at is not None and ends_at <= starts_at:
        raise InvalidEvent("ends_at", "An event must end after it starts.")
    if draft.capacity < 0:
        raise InvalidEvent("capacity", "Capacity can't be negative.")
    if draft.max_tickets_per_customer is not None and draft.max_tickets_per_customer < 1:
        raise InvalidEvent("max_tickets_per_customer", "The per-customer limit must be at least 1.")
    if draft.hold_minutes is not None and not (
        MIN_HOLD_MINUTES <= draft.hold_minutes <= MAX_HOLD_MINUTES
    ):
        raise InvalidEvent(
            "hold_minutes",
            f"A hold time must be {MIN_HOLD_MINUTES} to {MAX_HOLD_MINUTES} minutes, or null "
            "for reservations that are final at once.",
        )
    return replace(
        draft,
        name=name,
        venue=venue,
        starts_at=starts_at,
        ends_at=ends_at,
    )


def _valid_time(field_name: str, moment: datetime, horizon: datetime) -> datetime:
    try:
        moment = to_utc(moment)
    except ValueError as error:
        raise InvalidEvent(field_name, str(error)) from error
    if moment > horizon:
        raise InvalidEvent(
            field_name, f"Times can be at most {MAX_YEARS_AHEAD} years in the future."
        )
    return moment


def _valid_text(
    field_name: str, text: str, max_length: int, *, required: bool = True, allowed: str = ""
) -> str:
    label = field_name.capitalize()
    if required and not text:
        raise InvalidEvent(field_name, f"{label} can't be empty.")
    if len(text) > max_length:
        raise InvalidEvent(field_name, f"{label} can't be longer than {max_length} characters.")
    for forbidden in FORBIDDEN_CHARACTER.finditer(text):
        if forbidden.group() not in allowed:
            raise InvalidEvent(
                field_name,
                f"{label} can't contain U+{ord(forbidden.group()):04X}: control characters, "
                "line separators and bidirectional overrides are refused"
                + (" (newlines and tabs are allowed)." if allowed else "."),
            )
    return text
