"""Reserve, increase, decrease and cancel: the booking rules and their locking.

Every function runs inside the caller's transaction (see `Database.transaction`) and raises a
`DomainError` to refuse, which rolls everything back.

Concurrency: all changes to an event's tickets go through its `event` row, which each operation
locks first (the conditional UPDATE that opens `reserve`'s one statement, or SELECT ... FOR
UPDATE) before it touches a customer's hold or a reservation. One lock order everywhere means
no deadlocks, and it serialises every check that spans rows (the per-customer limit) with the
writes it guards. The CHECK constraints on `event`, `reservation` and `customer_hold` stay as
a backstop against any bug that slips past the rules.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import Select

from ticketing.domain.errors import (
    CustomerLimitReached,
    EventCancelled,
    EventStarted,
    InvalidQuantity,
    NotEnoughTickets,
    NotFound,
    ReservationCancelled,
)
from ticketing.domain.models import (
    ActorRole,
    ChangeKind,
    CustomerHold,
    Event,
    EventStatus,
    Reservation,
    ReservationChange,
    ReservationStatus,
)


class Owned(Protocol):
    """An event as far as access goes (the table row, or the API's view of it)."""

    @property
    def owner_id(self) -> str: ...


@dataclass(frozen=True)
class Actor:
    """Who asks: a customer id (the token's subject) and their roles. Every rule on who may
    do what to events and reservations is one of the methods below."""

    customer_id: str
    is_organizer: bool = False
    is_admin: bool = False  # may do everything an organizer may, on every event

    @property
    def runs_events(self) -> bool:
        """Whether the actor may create events (and manage their own)."""
        return self.is_organizer or self.is_admin

    def manages(self, event: Owned) -> bool:
        """Whether the actor may change or cancel `event`, see its reservations and cancel
        them. To anyone else an event's management looks like a missing event."""
        return self.is_admin or self._owns(event)

    def may_access(self, reservation: Reservation, event: Owned) -> bool:
        """Whether the actor may see (and cancel) `reservation`, a reservation of `event`."""
        return reservation.customer_id == self.customer_id or self.manages(event)

    def managing_role(self, event: Owned) -> ActorRole:
        """The role recorded for a change made as one who manages `event`."""
        return ActorRole.ORGANIZER if self._owns(event) else ActorRole.ADMIN

    def _owns(self, event: Owned) -> bool:
        return self.is_organizer and event.owner_id == self.customer_id

    def role_toward(self, reservation: Reservation, event: Owned) -> ActorRole:
        """The role recorded for a change the actor makes to `reservation`: its customer's
        own, else as one who manages its event."""
        if reservation.customer_id == self.customer_id:
            return ActorRole.CUSTOMER
        return self.managing_role(event)


@dataclass(frozen=True)
class Booking:
    """A reservation after an operation, and its event showing the new availability."""

    reservation: Reservation
    event: Event


# The database clock decides whether an event has started, so every server agrees; the
# clock's time at evaluation, not the transaction's start, as a lock wait may come first.
has_started = col(Event.starts_at) <= sa.func.clock_timestamp()


def reserve(session: Session, *, event_id: int, actor: Actor, quantity: int) -> Booking:
    """Works in a transaction and, being one statement when it succeeds, also in autocommit
    mode, where the hot event's row stays locked only while PostgreSQL runs the statement."""
    _require_positive(quantity)
    in_transaction = not _is_autocommit(session)
    # Tried again only when the tickets this statement missed were freed since: each round
    # means someone else's change went through, so this ends.
    while True:
        try:
            # A failed statement aborts a transaction: a savepoint keeps it usable for the
            # reads that explain the refusal.
            with session.begin_nested() if in_transaction else contextlib.nullcontext():
                booked = _reserve_in_one_statement(session, event_id, actor.customer_id, quantity)
        except sa.exc.IntegrityError as error:
            if getattr(error.orig, "diag", None) is None or (
                error.orig.diag.constraint_name != "hold_within_limit"  # type: ignore[union-attr]
            ):
                raise
            limit = session.scalar(
                select(Event.max_tickets_per_customer).where(col(Event.id) == event_id)
            )
            if limit is not None:
                held = _held(session, event_id, actor.customer_id)
                raise CustomerLimitReached(limit=limit, held=held) from None
            continue  # the organizer lifted the limit meanwhile
        if booked is not None:
            event, reservation = booked
            return Booking(reservation, event)
        # Refused, or raced: decide under the row lock (held to the end of a transaction; in
        # autocommit mode only for the read, so tickets freed since are taken by trying again).
        locked, started = lock_event(session, event_id)
        if locked.status == EventStatus.CANCELLED:
            raise EventCancelled()
        if started:
            raise EventStarted()
        if locked.tickets_available < quantity:
            raise NotEnoughTickets(requested=quantity, available=locked.tickets_available)


def _is_autocommit(session: Session) -> bool:
    """Whether each statement commits on its own: the driver's own flag, read without a
    round trip (however the connection was put in that mode)."""
    driver_connection = session.connection().connection.dbapi_connection
    return bool(getattr(driver_connection, "autocommit", False))


def _reserve_in_one_statement(
    session: Session, event_id: int, customer_id: str, quantity: int
) -> tuple[Event, Reservation] | None:
    """Take the tickets, count them against the customer's limit, create the reservation
    and its history line, all in one statement: atomic even outside a transaction.

    None if the event doesn't qualify (not on sale, started, not enough tickets). Over the
    customer's limit, the statement fails on the `hold_within_limit` constraint."""
    statement = getattr(_per_thread, "reserve", None)
    if statement is None:
        statement = _per_thread.reserve = _reserve_statement()
    found = session.exec(
        statement,
        params={"event_id": event_id, "customer_id": customer_id, "quantity": quantity},
    ).one_or_none()
    return None if found is None else (found[0], found[1])


def _reserve_statement() -> Select[Event, Reservation]:
    """The parameters are `event_id`, `customer_id` and `quantity`."""
    event_id = sa.bindparam("event_id", type_=sa.BigInteger)
    customer_id = sa.bindparam("customer_id", type_=sa.Text)
    quantity = sa.bindparam("quantity", type_=sa.Integer)
    taken = (
        sa.update(Event)
        .where(
            col(Event.id) == event_id,
            col(Event.status) == EventStatus.ON_SALE,
            ~has_started,
            col(Event.tickets_available) >= quantity,
        )
        .values(tickets_available=col(Event.tickets_available) - quantity, updated_at=sa.func.now())
        .returning(*Event.__table__.c)  # type: ignore[attr-defined]
        .cte("taken")
    )
    limit = taken.c.max_tickets_per_customer
    hold = CustomerHold.__table__  # type: ignore[attr-defined]
    proposed = insert(CustomerHold).from_select(
        ["event_id", "customer_id", "tickets", "ticket_limit"],
        sa.select(taken.c.id, customer_id, quantity, limit),
    )
    # The upsert adds to the latest committed holding, waiting for a concurrent reservation by
    # the same customer; past the event's limit, its CHECK fails the whole statement.
    held = (
        proposed.on_conflict_do_update(
            index_elements=["event_id", "customer_id"],
            set_={
                "tickets": hold.c.tickets + proposed.excluded.tickets,
                "ticket_limit": proposed.excluded.ticket_limit,
            },
        )
        .returning(hold.c.tickets)
        .cte("held")
    )
    made = (
        insert(Reservation)
        .from_select(
            ["event_id", "customer_id", "quantity", "status"],
            sa.select(
                taken.c.id, customer_id, quantity, sa.literal(ReservationStatus.ACTIVE.value)
            ).select_from(taken.join(held, sa.true())),
        )
        .returning(*Reservation.__table__.c)  # type: ignore[attr-defined]
        .cte("made")
    )
    logged = (
        insert(ReservationChange)
        .from_select(
            ["reservation_id", "kind", "quantity", "actor", "actor_role"],
            sa.select(
                made.c.id,
                sa.literal(ChangeKind.CREATED.value),
                made.c.quantity,
                made.c.customer_id,
                sa.literal(ActorRole.CUSTOMER.value),
            ),
        )
        .cte("logged")
    )
    return (
        select(aliased(Event, taken), aliased(Reservation, made))
        .select_from(taken)
        .join(made, sa.true())
        .add_cte(logged)
        .execution_options(populate_existing=True)
    )


# Built once per thread, not once per process: SQLAlchemy completes a statement lazily on its
# first use, which is not thread-safe. A shared one, first run by many threads at once, was
# seen to render wrong SQL (the event table instead of the CTE) and keep it in its cache.
_per_thread = threading.local()


def _held(session: Session, event_id: int, customer_id: str) -> int:
    held = session.scalar(
        select(CustomerHold.tickets).where(
            col(CustomerHold.event_id) == event_id, col(CustomerHold.customer_id) == customer_id
        )
    )
    return held or 0


def increase(session: Session, *, reservation_id: int, actor: Actor, quantity: int) -> Booking:
    _require_positive(quantity)
    event, reservation, started = _lock_owned(session, reservation_id, actor)
    _require_changeable(event, reservation, started)
    if event.tickets_available < quantity:
        raise NotEnoughTickets(requested=quantity, available=event.tickets_available)
    _check_customer_limit(session, event, reservation.customer_id, quantity)
    return _apply(session, event, reservation, ChangeKind.INCREASED, quantity, actor)


def decrease(session: Session, *, reservation_id: int, actor: Actor, quantity: int) -> Booking:
    _require_positive(quantity)
    event, reservation, started = _lock_owned(session, reservation_id, actor)
    _require_changeable(event, reservation, started)
    if quantity >= reservation.quantity:
        raise InvalidQuantity(
            min=1,
            max=reservation.quantity - 1,
            reason=(
                f"A decrease must leave at least one ticket (the reservation holds "
                f"{reservation.quantity}); cancel the reservation to release them all."
            ),
        )
    return _apply(session, event, reservation, ChangeKind.DECREASED, quantity, actor)


def cancel(session: Session, *, reservation_id: int, actor: Actor) -> Booking:
    """Release the reservation's tickets. Cancelling it again returns it unchanged."""
    event, reservation, started = _lock_for_change(session, reservation_id)
    if not actor.may_access(reservation, event):
        raise NotFound("Reservation", reservation_id)
    if reservation.status == ReservationStatus.CANCELLED:
        return Booking(reservation, event)
    if started:
        raise EventStarted()
    return _apply(session, event, reservation, ChangeKind.CANCELLED, reservation.quantity, actor)


def _require_positive(quantity: int) -> None:
    if quantity < 1:
        raise InvalidQuantity(min=1, max=None)


def lock_event(session: Session, event_id: int) -> tuple[Event, bool]:
    """Lock an event's row (the first lock of every operation on it); also says whether it has
    started."""
    found = _lock_event_where(session, col(Event.id) == event_id)
    if found is None:
        raise NotFound("Event", event_id)
    return found


def _lock_event_where(
    session: Session, condition: sa.ColumnElement[bool]
) -> tuple[Event, bool] | None:
    found = session.exec(
        select(Event, has_started)
        .where(condition)
        .with_for_update(of=Event)
        .execution_options(populate_existing=True)
    ).one_or_none()
    return None if found is None else (found[0], found[1])


def _lock_for_change(session: Session, reservation_id: int) -> tuple[Event, Reservation, bool]:
    """Lock the reservation's event, then read the reservation under that lock.

    Returns the event, the reservation and whether the event has started."""
    event_of_reservation = (
        select(Reservation.event_id).where(col(Reservation.id) == reservation_id).scalar_subquery()
    )
    found = _lock_event_where(session, col(Event.id) == event_of_reservation)
    if found is None:
        raise NotFound("Reservation", reservation_id)
    event, started = found
    # A fresh statement after the lock: it sees every change committed before we got it.
    reservation = session.exec(
        select(Reservation)
        .where(col(Reservation.id) == reservation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    return event, reservation, started


def _lock_owned(
    session: Session, reservation_id: int, actor: Actor
) -> tuple[Event, Reservation, bool]:
    """Only its customer may change a reservation's quantity (organizers may only cancel it);
    others get NotFound."""
    locked = _lock_for_change(session, reservation_id)
    if locked[1].customer_id != actor.customer_id:
        raise NotFound("Reservation", reservation_id)
    return locked


def _require_changeable(event: Event, reservation: Reservation, started: bool) -> None:
    # The event's state first: it explains why its reservations were cancelled.
    if event.status == EventStatus.CANCELLED:
        raise EventCancelled()
    if reservation.status == ReservationStatus.CANCELLED:
        raise ReservationCancelled()
    if started:
        raise EventStarted()


def _check_customer_limit(session: Session, event: Event, customer_id: str, adding: int) -> None:
    """Runs while this transaction holds the event's row lock, so `held` can't change under it."""
    limit = event.max_tickets_per_customer
    if limit is None:
        return
    assert event.id is not None
    held = _held(session, event.id, customer_id)
    if held + adding > limit:
        raise CustomerLimitReached(limit=limit, held=held)


def _apply(
    session: Session,
    event: Event,
    reservation: Reservation,
    kind: ChangeKind,
    quantity: int,
    actor: Actor,
) -> Booking:
    """Write one change to both rows (already locked) and its history line."""
    taken = quantity if kind == ChangeKind.INCREASED else -quantity
    reservation_values: dict[str, object] = {"updated_at": sa.func.now()}
    if kind == ChangeKind.CANCELLED:
        reservation_values |= {
            "status": ReservationStatus.CANCELLED,
            "cancelled_at": sa.func.now(),
        }
    else:
        reservation_values["quantity"] = col(Reservation.quantity) + taken
    updated_reservation = (
        session.exec(
            sa.update(Reservation)
            .where(col(Reservation.id) == reservation.id)
            .values(reservation_values)
            .returning(Reservation)
            .execution_options(populate_existing=True)
        )
        .scalars()
        .one()
    )
    updated_event = (
        session.exec(
            sa.update(Event)
            .where(col(Event.id) == event.id)
            .values(
                tickets_available=col(Event.tickets_available) - taken, updated_at=sa.func.now()
            )
            .returning(Event)
            .execution_options(populate_existing=True)
        )
        .scalars()
        .one()
    )
    hold_values: dict[str, object] = {"tickets": col(CustomerHold.tickets) + taken}
    if kind == ChangeKind.INCREASED:
        hold_values["ticket_limit"] = event.max_tickets_per_customer
    session.exec(
        sa.update(CustomerHold)
        .where(
            col(CustomerHold.event_id) == event.id,
            col(CustomerHold.customer_id) == reservation.customer_id,
        )
        .values(hold_values)
    )
    assert reservation.id is not None
    session.add(
        ReservationChange(
            reservation_id=reservation.id,
            kind=kind,
            quantity=quantity,
            actor=actor.customer_id,
            actor_role=actor.role_toward(reservation, event),
        )
    )
    session.flush()
    return Booking(updated_reservation, updated_event)
