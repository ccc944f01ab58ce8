"""Demo events for a local instance (not a migration: production databases start empty)."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from ticketing.domain import clock
from ticketing.domain.events import EventDraft, create_event
from ticketing.domain.models import Event

# The organizer who owns the demo events; `make serve` prints a token for this subject.
DEMO_ORGANIZER = "demo-organizer"
DEMO_EVENTS = [
    # name, venue, days from now, hours long, capacity, per-customer limit, description
    (
        "Aurora Symphony Night",
        "Harbour Concert Hall",
        7,
        3,
        500,
        6,
        "The city orchestra plays Sibelius and Grieg under the northern lights projection.",
    ),
    (
        "Indie Rooftop Sessions",
        "Skyline Terrace",
        10,
        4,
        120,
        4,
        "Four up-and-coming bands on an open-air rooftop stage.",
    ),
    (
        "Tech Meetup: Databases at Scale",
        "Innovation Hub, Room 2",
        14,
        2,
        80,
        2,
        "Talks on PostgreSQL internals, locking and keeping inventories consistent.",
    ),
    (
        "Championship Final",
        "Riverside Stadium",
        21,
        3,
        20000,
        8,
        "The season's final match. Gates open two hours before kick-off.",
    ),
    (
        "Comedy Late Show",
        "The Basement Club",
        5,
        2,
        60,
        None,
        "Stand-up from five comedians, hosted by a surprise headliner.",
    ),
    (
        "Sold-Out Jazz Evening",
        "Blue Note Cellar",
        3,
        3,
        2,
        2,
        "An intimate set with two seats only: try reserving more than there is.",
    ),
]


def seed_demo_events(session: Session) -> int:
    """Add the demo events that are not there yet; returns how many were added."""
    now = clock.read(session)
    existing = set(session.exec(select(Event.name)).all())
    added = 0
    for name, venue, days, hours, capacity, limit, description in DEMO_EVENTS:
        if name in existing:
            continue
        starts_at = (now + timedelta(days=days)).replace(hour=19, minute=0, second=0, microsecond=0)
        create_event(
            EventDraft(
                name=name,
                venue=venue,
                starts_at=starts_at,
                ends_at=starts_at + timedelta(hours=hours),
                capacity=capacity,
                max_tickets_per_customer=limit,
                description=description,
            ),
            owner_id=DEMO_ORGANIZER,
        )(session)
        added += 1
    return added
