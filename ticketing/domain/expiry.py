"""Holds run out even when nobody touches their event: each server process sweeps.

Correctness doesn't depend on the sweep: every lock of an event releases its expired holds
first (see `locking`). The sweep makes a hold EXPIRED, its tickets available (or offered to
the waitlist) and its history complete within moments of `expires_at` on quiet events too.
Several processes sweeping at once don't double-release: each event is settled under its
row lock, and a process skips an event whose lock another holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from ticketing.domain import clock
from ticketing.domain.locking import settle_unless_busy
from ticketing.domain.models import Reservation, ReservationStatus
from ticketing.domain.operation import Operation


def due_events(session: Session, *, limit: int) -> Sequence[int]:
    """Events with holds that have run out, at most `limit` of them."""
    return session.exec(
        select(Reservation.event_id)
        .where(
            col(Reservation.status) == ReservationStatus.HELD,
            col(Reservation.expires_at) <= clock.now(),
        )
        .distinct()
        .limit(limit)
    ).all()


def settle(event_id: int) -> Operation[bool]:
    """Release the event's expired holds (and serve its waitlist), unless its lock is busy.
    Whether it was settled."""
    return Operation(lambda session: settle_unless_busy(session, event_id))
