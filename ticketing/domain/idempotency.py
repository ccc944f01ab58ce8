"""Safe retries: a booking or waitlist operation run under a customer's idempotency key
happens once; a retry with the same key returns the first answer and changes nothing.

The key is claimed with INSERT ... ON CONFLICT DO NOTHING inside the operation's own
transaction, before any event lock. A concurrent retry's INSERT waits on the first one's
uncommitted row: once that commits, the retry finds the stored answer; if it rolled back (a
refusal, which changes nothing and is not remembered), the retry claims the key and runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col, select

from ticketing.domain import clock
from ticketing.domain.actors import Actor
from ticketing.domain.errors import IdempotencyKeyReused
from ticketing.domain.inventory import Booking
from ticketing.domain.models import Event, IdempotencyKey, Reservation, WaitlistEntry
from ticketing.domain.operation import Operation
from ticketing.domain.waitlist import Placement

MAX_KEY_LENGTH = 255


def is_valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()


# What a keyed operation answers: a reservation or a waitlist entry, with its event.
Outcome = TypeVar("Outcome", Booking, Placement)


def once(
    operation: Operation[Outcome],
    *,
    actor: Actor,
    key: str,
    fingerprint: str,
    on_replay: Callable[[], object] = lambda: None,
) -> Operation[Outcome]:
    """`operation`, unless this customer already did it under `key`: then its first answer,
    and `on_replay` is called. `fingerprint` identifies the request; the same key with
    another one is refused. The key is claimed in the operation's transaction, so it always
    runs in one."""
    return Operation(
        lambda session: _once(session, operation, actor, key, fingerprint, on_replay),
        contends_for=operation.contends_for,
    )


def _once(
    session: Session,
    operation: Operation[Outcome],
    actor: Actor,
    key: str,
    fingerprint: str,
    on_replay: Callable[[], object],
) -> Outcome:
    claimed = session.exec(
        insert(IdempotencyKey)
        .values(customer_id=actor.customer_id, key=key, fingerprint=fingerprint)
        .on_conflict_do_nothing(index_elements=["customer_id", "key"])
        .returning(col(IdempotencyKey.key))
    ).first()
    if claimed is None:
        replayed = cast(Outcome, _replay(session, actor, key, fingerprint))
        on_replay()
        return replayed
    done = operation(session)
    row = done.reservation if isinstance(done, Booking) else done.entry
    outcome = {
        _ROW_NAMES[type(done)]: row.model_dump(mode="json"),
        "event": done.event.model_dump(mode="json"),
    }
    session.exec(
        sa.update(IdempotencyKey)
        .where(col(IdempotencyKey.customer_id) == actor.customer_id, col(IdempotencyKey.key) == key)
        .values(outcome=outcome)
    )
    return done


_ROW_NAMES = {Booking: "reservation", Placement: "entry"}


def _replay(session: Session, actor: Actor, key: str, fingerprint: str) -> Booking | Placement:
    stored = session.get(IdempotencyKey, (actor.customer_id, key))
    assert stored is not None
    assert stored.outcome is not None, "a claimed key commits with its outcome"
    if stored.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    answered = stored.outcome["event"]
    # The answer as it was, but who manages the event as it is now: the event may have been
    # handed to another organizer since.
    owner_id = session.scalar(select(Event.owner_id).where(col(Event.id) == answered["id"]))
    event = Event.model_validate({**answered, "owner_id": owner_id})
    if "entry" in stored.outcome:
        return Placement(WaitlistEntry.model_validate(stored.outcome["entry"]), event)
    return Booking(Reservation.model_validate(stored.outcome["reservation"]), event)


def purge_expired(session: Session, *, older_than: timedelta) -> int:
    """Forget keys older than `older_than`; returns how many."""
    purged = session.exec(
        sa.delete(IdempotencyKey).where(col(IdempotencyKey.created_at) < clock.now() - older_than)
    )
    return int(purged.rowcount)
