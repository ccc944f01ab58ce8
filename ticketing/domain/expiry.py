"""Holds run out even when nobody touches their event: each server process sweeps.

Correctness doesn't depend on the sweep: every lock of an event releases its expired holds
first (see `locking`). The sweep makes a hold EXPIRED, its tickets available (or offered to
the waitlist) and its history complete within moments of `expires_at` on quiet events too.
Several processes sweeping at once don't double-release: each event is settled under its
row lock, and whoever comes second finds nothing left to release.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from ticketing.domain import clock
from ticketing.domain.locking import lock_event
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


def settle(event_id: int) -> Operation[None]:
    """Release the event's expired holds and serve its waitlist: what taking its lock does.
    It waits for the lock (bounded by the lock timeout) rather than skipping a busy event:
    on a hot event whose attempts are all refused, only a sweep commits the release."""

    def work(session: Session) -> None:
        lock_event(session, event_id)

    return Operation(work)
