"""Holds run out even when nobody touches their event: each server process sweeps.

Correctness doesn't depend on the sweep: every lock of an event releases its expired holds
first (see `locking`). The sweep makes a hold EXPIRED, its tickets available (or offered to
the waitlist) and its history complete within moments of `expires_at` on quiet events too.
Several processes sweeping at once don't double-release: each event is settled under its
row lock, and whoever comes second finds nothing left to release.

A sweep settles the due events in bulk (`settle_due`: up to a hundred events in one
transaction of a few statements, skipping locked ones), since a transaction per event took
over 10 ms each on a busy machine: 10,000 holds over 1,000 events took 15 s to release. Only
when all the due events are locked by others does it wait for one event's lock (`settle`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from ticketing.domain.locking import events_with_expired_holds, lock_event, lock_expired_events
from ticketing.domain.operation import Operation


def due_events(session: Session, *, limit: int) -> Sequence[int]:
    """Events with holds that have run out, at most `limit` of them."""
    return session.exec(events_with_expired_holds(limit)).all()


def settle_due(event_ids: Sequence[int]) -> Operation[int]:
    """Settle the events (from `due_events`) in one transaction, skipping any locked now; how
    many it settled."""
    return Operation(lambda session: lock_expired_events(session, event_ids))


def settle(event_id: int) -> Operation[None]:
    """Release the event's expired holds and serve its waitlist: what taking its lock does.
    It waits for the lock (bounded by the lock timeout) rather than skipping a busy event:
    on a hot event whose attempts are all refused, only a sweep commits the release."""

    def work(session: Session) -> None:
        lock_event(session, event_id)

    return Operation(work)
