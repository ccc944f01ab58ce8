"""The statements that take and give back an event's tickets.

Each runs while its event's row is locked (see `locking`), or takes that lock as its first
step (the one-statement reservation). The CHECK constraints on `event`, `reservation` and
`customer_hold` stay as a backstop against any bug that slips past the rules.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.orm import Mapped, aliased
from sqlalchemy.sql.util import ClauseAdapter
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import Select

from ticketing.db import PRECEDED_BY
from ticketing.domain import clock, rules
from ticketing.domain.actors import Actor
from ticketing.domain.errors import DomainError
from ticketing.domain.models import (
    SYSTEM_ACTOR,
    ActorRole,
    ChangeKind,
    CustomerHold,
    Event,
    Reservation,
    ReservationChange,
    ReservationStatus,
    WaitlistEntry,
)


@dataclass(frozen=True)
class Booking:
    """A reservation after an operation, and its event showing the new availability."""

    reservation: Reservation
    event: Event


# A HELD reservation whose hold ran out but is not released yet.
expired_hold = sa.and_(
    col(Reservation.status) == ReservationStatus.HELD,
    col(Reservation.expires_at) <= clock.now(),
)


def has_expired_holds(
    event_id: sa.ColumnElement[int] | Mapped[int | None],
) -> sa.ColumnElement[bool]:
    """Whether the event has holds that ran out but are not released yet."""
    return sa.exists().where(col(Reservation.event_id) == event_id, expired_hold)


def take_in_one_statement(
    session: Session, *, event_id: int, customer_id: str, quantity: int
) -> Booking | None:
    """Take the tickets, add them to the customer's hold, create the reservation and its
    history line, all in one statement: atomic even outside a transaction, and the event's
    row stays locked only while PostgreSQL runs it.

    None if a rule refuses it (see `rules.refusal`) or the event has expired holds, which
    only the event's lock releases (see `locking`). Over the customer's limit, the statement
    fails on the `hold_within_limit` constraint (see `rules.customer_limit`)."""
    statement = getattr(_per_thread, "take", None)
    if statement is None:
        statement = _per_thread.take = _take_statement()
    found = session.exec(
        statement,
        params={"event_id": event_id, "customer_id": customer_id, "quantity": quantity},
    ).one_or_none()
    return None if found is None else Booking(reservation=found[1], event=found[0])


def _take_statement() -> Select[Event, Reservation]:
    """The parameters are `event_id`, `customer_id` and `quantity`."""
    event_id = sa.bindparam("event_id", type_=sa.BigInteger)
    customer_id = sa.bindparam("customer_id", type_=sa.Text)
    quantity = sa.bindparam("quantity", type_=sa.Integer)
    taken = (
        sa.update(Event)
        .where(
            col(Event.id) == event_id,
            rules.refusal(taking=quantity).is_(None),
            # Those holds still count against the customer's limit, and the tickets they free
            # go to the waitlist before anyone else: the locked path releases them first.
            ~has_expired_holds(col(Event.id)),
        )
        .values(tickets_available=col(Event.tickets_available) - quantity, updated_at=clock.now())
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
            _NEW_RESERVATION,
            sa.select(
                taken.c.id, customer_id, quantity, *_new_reservation_state(taken.c.hold_minutes)
            ).select_from(taken.join(held, sa.true())),
        )
        .returning(*Reservation.__table__.c)  # type: ignore[attr-defined]
        .cte("made")
    )
    logged = _created_history(made)
    return (
        select(aliased(Event, taken), aliased(Reservation, made))
        .select_from(taken)
        .join(made, sa.true())
        .add_cte(logged)
        .execution_options(populate_existing=True)
    )


_ONE_MINUTE: sa.ColumnElement[timedelta] = sa.literal_column(
    "interval '1 minute'", type_=sa.Interval
)

# A new reservation's columns: its event's, its customer's and quantity, then its state.
_NEW_RESERVATION = ["event_id", "customer_id", "quantity", "status", "expires_at", "confirmed_at"]


def _new_reservation_state(
    hold_minutes: sa.ColumnElement[int | None],
) -> tuple[sa.ColumnElement[Any], ...]:
    """On an event with a hold time a new reservation is HELD until confirmed, else final."""
    return (
        sa.case(
            (hold_minutes.is_(None), ReservationStatus.ACTIVE.value),
            else_=ReservationStatus.HELD.value,
        ),
        clock.now() + hold_minutes * _ONE_MINUTE,
        sa.case((hold_minutes.is_(None), clock.now())),
    )


def _created_history(made: sa.CTE) -> sa.CTE:
    """The CREATED history lines of the reservations `made` returns."""
    return (
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


@dataclass(frozen=True)
class Asked:
    """One customer's request for tickets, among others for the same event."""

    customer_id: str
    quantity: int


def take_together(
    session: Session, *, event_id: int, asked: Sequence[Asked]
) -> list[Booking | DomainError] | None:
    """Decide many reservations of one event at once, first come first served: each takes
    its tickets, or is refused as alone it would be (see `rules.reservation_refusal`), as
    if they came one after the other. One round trip, which locks the event's row once
    for all of them, then takes, inserts the reservations and their history lines and adds
    to the customers' holds in one statement; atomic even outside a transaction.

    The answers in the order asked, each with the event as the statement left it. None if
    the event doesn't exist or has expired holds, which only the event's lock releases
    (see `locking`): then nothing was done."""
    # SQLModel's `exec` types only its own `select`, which takes at most four entities.
    statement: Any = getattr(_per_thread, "take_together", None)
    if statement is None:
        statement = _per_thread.take_together = _take_together_statement()
    rows = session.exec(
        statement,
        params={
            "event_id": event_id,
            "customers": [one.customer_id for one in asked],
            "quantities": [one.quantity for one in asked],
        },
        # The statement reads the customers' holds: a snapshot taken once the lock is ours
        # sees every change committed before (they all lock the event's row first). So it
        # comes after a statement that only takes the lock, in the same query string
        # (one implicit transaction outside a transaction).
        execution_options={
            PRECEDED_BY: f"SELECT FROM event WHERE id = {int(event_id)} FOR UPDATE; "
        },
    ).all()
    if not rows:
        return None
    answers: list[Booking | DomainError] = []
    for (event, refusal, available, held, reservation), one in zip(rows, asked, strict=True):
        if refusal is None:
            answers.append(Booking(reservation=reservation, event=event))
        else:
            answers.append(
                rules.refusal_error(
                    refusal, event, taking=one.quantity, available=available, held=held
                )
            )
    return answers


def _take_together_statement() -> sa.Select[Event, str | None, int, int, Reservation]:
    """The parameters are `event_id`, and `customers` and `quantities` in the order asked."""
    event_id = sa.bindparam("event_id", type_=sa.BigInteger)
    hold = CustomerHold.__table__  # type: ignore[attr-defined]
    requests = (
        sa.func.unnest(
            sa.bindparam("customers", type_=ARRAY(sa.Text)),
            sa.bindparam("quantities", type_=ARRAY(sa.Integer)),
        )
        .table_valued(
            sa.column("customer_id", sa.Text),
            sa.column("quantity", sa.Integer),
            with_ordinality="ord",
        )
        .render_derived()
    )
    asked = (
        sa.select(
            requests.c.ord,
            requests.c.customer_id,
            requests.c.quantity,
            sa.func.coalesce(hold.c.tickets, 0).label("held"),
        )
        .select_from(
            requests.outerjoin(
                hold,
                sa.and_(hold.c.event_id == event_id, hold.c.customer_id == requests.c.customer_id),
            )
        )
        .cte("asked")
    )
    # A walk through the requests in order. Its first row is the event as locked; each next
    # one, the event after a request (`tickets_available` left, and in `taken` the tickets
    # the walk gave each customer), with that request's refusal, if any.
    start = sa.select(
        col(Event.id),
        col(Event.status),
        col(Event.starts_at),
        col(Event.tickets_available),
        col(Event.max_tickets_per_customer),
        sa.cast(0, sa.BigInteger).label("ord"),
        sa.null().cast(sa.Text).label("customer_id"),
        sa.null().cast(sa.Integer).label("quantity"),
        sa.literal_column("'{}'::jsonb", JSONB).label("taken"),
        sa.null().cast(sa.Text).label("refusal"),
        sa.null().cast(sa.Integer).label("held"),
        sa.null().cast(sa.BigInteger).label("reservation_id"),
    ).where(col(Event.id) == event_id, ~has_expired_holds(col(Event.id)))
    walk = start.cte("walk", recursive=True)
    taken_before = sa.func.coalesce(walk.c.taken.op("->>")(asked.c.customer_id).cast(sa.Integer), 0)
    held = asked.c.held + taken_before
    # Its event's columns are the walk's: the state left by the requests before it.
    refusal = ClauseAdapter(walk).traverse(
        rules.reservation_refusal(taking=asked.c.quantity, held=held)
    )
    granted = refusal.is_(None)
    walk = walk.union_all(
        sa.select(
            walk.c.id,
            walk.c.status,
            walk.c.starts_at,
            walk.c.tickets_available - sa.case((granted, asked.c.quantity), else_=0),
            walk.c.max_tickets_per_customer,
            asked.c.ord,
            asked.c.customer_id,
            asked.c.quantity,
            sa.case(
                (
                    granted,
                    walk.c.taken.op("||")(
                        sa.func.jsonb_build_object(
                            asked.c.customer_id, taken_before + asked.c.quantity
                        )
                    ),
                ),
                else_=walk.c.taken,
            ),
            refusal,
            held,
            # Its id, drawn here so that each answer finds its own reservation.
            sa.case((granted, _NEXT_RESERVATION_ID)),
        ).select_from(walk.join(asked, asked.c.ord == walk.c.ord + 1))
    )
    granted_rows = sa.and_(walk.c.ord > 0, walk.c.refusal.is_(None))
    tickets_taken = sa.select(sa.func.sum(walk.c.quantity)).where(granted_rows).scalar_subquery()
    taken = (
        sa.update(Event)
        .where(col(Event.id) == event_id, sa.exists().where(granted_rows))
        .values(
            tickets_available=col(Event.tickets_available) - tickets_taken,
            updated_at=clock.now(),
        )
        .returning(*Event.__table__.c)  # type: ignore[attr-defined]
        .cte("taken")
    )
    per_customer = (
        sa.select(walk.c.customer_id, sa.func.sum(walk.c.quantity).label("tickets"))
        .where(granted_rows)
        .group_by(walk.c.customer_id)
        .subquery("per_customer")
    )
    proposed = insert(CustomerHold).from_select(
        ["event_id", "customer_id", "tickets", "ticket_limit"],
        sa.select(
            taken.c.id,
            per_customer.c.customer_id,
            per_customer.c.tickets,
            taken.c.max_tickets_per_customer,
        ).select_from(taken.join(per_customer, sa.true())),
    )
    # The CHECK on the holds stays a backstop: past a limit, it fails the whole statement.
    held_now = proposed.on_conflict_do_update(
        index_elements=["event_id", "customer_id"],
        set_={
            "tickets": hold.c.tickets + proposed.excluded.tickets,
            "ticket_limit": proposed.excluded.ticket_limit,
        },
    ).cte("held_now")
    made = (
        insert(Reservation)
        .from_select(
            ["id", *_NEW_RESERVATION],
            sa.select(
                walk.c.reservation_id,
                taken.c.id,
                walk.c.customer_id,
                walk.c.quantity,
                *_new_reservation_state(taken.c.hold_minutes),
            )
            .select_from(walk.join(taken, sa.true()))
            .where(granted_rows),
        )
        .returning(*Reservation.__table__.c)  # type: ignore[attr-defined]
        .cte("made")
    )
    # The event as the statement leaves it: its main query can't see the CTEs' changes.
    untouched = sa.select(Event).where(col(Event.id) == event_id, ~sa.exists(sa.select(taken.c.id)))
    after = sa.union_all(sa.select(taken), untouched).cte("after")
    return (
        sa.select(
            aliased(Event, after),
            walk.c.refusal,
            walk.c.tickets_available,
            walk.c.held,
            aliased(Reservation, made),
        )
        .select_from(walk)
        .join(after, sa.true())
        .outerjoin(made, made.c.id == walk.c.reservation_id)
        .where(walk.c.ord > 0)
        .order_by(walk.c.ord)
        .add_cte(held_now, _created_history(made))
        .execution_options(populate_existing=True)
    )


# The next value of the reservations' identity, as a row inserted without an id would get.
_NEXT_RESERVATION_ID: sa.ColumnElement[int] = sa.literal_column(
    "nextval(pg_get_serial_sequence('reservation', 'id'))", type_=sa.BigInteger
)


# Built once per thread, not once per process: SQLAlchemy completes a statement lazily on its
# first use, which is not thread-safe. A shared one, first run by many threads at once, was
# seen to render wrong SQL (the event table instead of the CTE) and keep it in its cache.
_per_thread = threading.local()


def change_tickets(
    session: Session,
    event: Event,
    reservation: Reservation,
    kind: ChangeKind,
    quantity: int,
    actor: Actor,
) -> Booking:
    """Write one change (INCREASED, DECREASED, CANCELLED) to a locked reservation, its event
    and its customer's hold, and its history line. Adding tickets sets the hold's limit to
    the event's, so its CHECK enforces the limit (see `rules.customer_limit`)."""
    taken = quantity if kind == ChangeKind.INCREASED else -quantity
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
    reservation_values: dict[str, object] = {"updated_at": clock.now()}
    if kind == ChangeKind.CANCELLED:
        reservation_values |= {
            "status": ReservationStatus.CANCELLED,
            "cancelled_at": clock.now(),
            "expires_at": None,
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
    updated_event = update_event_row(
        session,
        event.id,
        {"tickets_available": col(Event.tickets_available) - taken, "updated_at": clock.now()},
    )
    log_change(
        session, reservation, kind, quantity, actor, role=actor.role_toward(reservation, event)
    )
    return Booking(updated_reservation, updated_event)


def confirm_in_one_statement(session: Session, reservation_id: int, actor: Actor) -> Booking | None:
    """Make a HELD reservation final, with its history line, in one statement that locks the
    reservation's row but not its event's: confirming moves no tickets, so a hot event's
    confirmations don't queue on its row. None unless the reservation is HELD and not run
    out, the actor may confirm it and no rule refuses it (see `rules.refusal`); the locked
    path explains why."""
    # The row is locked by a subquery, which PostgreSQL runs before it evaluates the
    # conditions: a wait for the row must not leave the hold's end judged as of before it.
    locked_first = (
        select(Reservation.id)
        .where(col(Reservation.id) == reservation_id)
        .with_for_update()
        .scalar_subquery()
    )
    confirmed = (
        sa.update(Reservation)
        .where(
            col(Reservation.id) == locked_first,
            col(Reservation.event_id) == col(Event.id),
            col(Reservation.status) == ReservationStatus.HELD,
            col(Reservation.expires_at) > clock.now(),
            actor.may_confirm_where(),
            rules.refusal(of_reservation=True).is_(None),
        )
        .values(
            status=ReservationStatus.ACTIVE,
            confirmed_at=clock.now(),
            expires_at=None,
            updated_at=clock.now(),
        )
        .returning(*Reservation.__table__.c)  # type: ignore[attr-defined]
        .cte("confirmed")
    )
    role = sa.case(
        (confirmed.c.customer_id == actor.customer_id, ActorRole.CUSTOMER.value),
        else_=ActorRole.CHECKOUT.value,
    )
    logged = (
        insert(ReservationChange)
        .from_select(
            ["reservation_id", "kind", "quantity", "actor", "actor_role"],
            sa.select(
                confirmed.c.id,
                sa.literal(ChangeKind.CONFIRMED.value),
                confirmed.c.quantity,
                sa.literal(actor.customer_id),
                role,
            ),
        )
        .cte("logged")
    )
    found = session.exec(
        select(aliased(Reservation, confirmed), Event)
        .join(Event, col(Event.id) == confirmed.c.event_id)
        .add_cte(logged)
        .execution_options(populate_existing=True)
    ).one_or_none()
    return None if found is None else Booking(reservation=found[0], event=found[1])


def log_change(
    session: Session,
    reservation: Reservation,
    kind: ChangeKind,
    quantity: int,
    actor: Actor,
    *,
    role: ActorRole,
) -> None:
    assert reservation.id is not None
    session.add(
        ReservationChange(
            reservation_id=reservation.id,
            kind=kind,
            quantity=quantity,
            actor=actor.customer_id,
            actor_role=role,
        )
    )
    session.flush()


# Every expired hold of the given events at once: EXPIRED with a history line, its tickets back
# in the customer's hold and on its event. One statement, so a storm costs one round trip.
_RELEASE_EXPIRED = sa.text(
    """
    WITH expired AS (
        UPDATE reservation SET status = 'EXPIRED', updated_at = ticketing_now()
        WHERE event_id = ANY(:event_ids) AND status = 'HELD' AND expires_at <= ticketing_now()
        RETURNING id, event_id, customer_id, quantity
    ), logged AS (
        INSERT INTO reservation_change (reservation_id, kind, quantity, actor, actor_role)
        SELECT id, 'EXPIRED', quantity, :system, 'SYSTEM' FROM expired
    ), released AS (
        UPDATE customer_hold AS hold SET tickets = hold.tickets - per_customer.tickets
        FROM (SELECT event_id, customer_id, sum(quantity) AS tickets FROM expired
              GROUP BY event_id, customer_id) AS per_customer
        WHERE hold.event_id = per_customer.event_id
            AND hold.customer_id = per_customer.customer_id
    )
    UPDATE event SET
        tickets_available = tickets_available + per_event.tickets, updated_at = ticketing_now()
    FROM (SELECT event_id, sum(quantity) AS tickets FROM expired GROUP BY event_id) AS per_event
    WHERE event.id = per_event.event_id
    RETURNING event.*
    """
).columns(*Event.__table__.c)  # type: ignore[attr-defined]


def release_expired(session: Session, event_ids: Sequence[int]) -> Sequence[Event]:
    """Give back the tickets of the events' holds that ran out; the events that had any, after.
    Run it under those events' locks."""
    return session.scalars(
        select(Event).from_statement(_RELEASE_EXPIRED),
        {"event_ids": list(event_ids), "system": SYSTEM_ACTOR},
        execution_options={"populate_existing": True},
    ).all()


# Hold tickets for a waitlist entry's customer: a HELD reservation with an OFFERED history
# line, in the customer's hold, linked from the entry.
_OFFER = sa.text(
    """
    WITH made AS (
        INSERT INTO reservation (event_id, customer_id, quantity, status, expires_at)
        VALUES (:event_id, :customer_id, :quantity, 'HELD',
                ticketing_now() + :minutes * interval '1 minute')
        RETURNING id
    ), logged AS (
        INSERT INTO reservation_change (reservation_id, kind, quantity, actor, actor_role)
        SELECT id, 'OFFERED', :quantity, :system, 'SYSTEM' FROM made
    ), held AS (
        INSERT INTO customer_hold (event_id, customer_id, tickets, ticket_limit)
        VALUES (:event_id, :customer_id, :quantity, :ticket_limit)
        ON CONFLICT (event_id, customer_id) DO UPDATE
        SET tickets = customer_hold.tickets + excluded.tickets, ticket_limit = excluded.ticket_limit
    )
    UPDATE waitlist_entry SET
        status = 'OFFERED', reservation_id = (SELECT id FROM made), updated_at = ticketing_now()
    WHERE id = :entry_id
    """
)


def offer(session: Session, event: Event, entry: WaitlistEntry, minutes: int) -> None:
    """Hold `entry`'s tickets for its customer for `minutes`; the caller takes them off the
    event (see `take_offered`). Run it under the event's lock."""
    session.execute(
        _OFFER,
        {
            "event_id": event.id,
            "customer_id": entry.customer_id,
            "quantity": entry.quantity,
            "minutes": minutes,
            "system": SYSTEM_ACTOR,
            "ticket_limit": event.max_tickets_per_customer,
            "entry_id": entry.id,
        },
    )


def update_event_row(session: Session, event_id: int | None, values: dict[str, object]) -> Event:
    updated = session.exec(
        sa.update(Event)
        .where(col(Event.id) == event_id)
        .values(values)
        .returning(Event)
        .execution_options(populate_existing=True)
    )
    event: Event = updated.scalars().one()
    return event
