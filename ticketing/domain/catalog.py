"""Reads: event listings, reservations and history, with keyset pagination.

A page is asked for with the sort key of the last row already seen (`after`), so pages stay
stable while rows are inserted before them, and every page costs one index range scan.
"""

from __future__ import annotations

import enum
from collections import defaultdict, namedtuple
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, aliased
from sqlmodel import Session, SQLModel, col, select

from ticketing.domain import clock
from ticketing.domain.models import (
    Event,
    EventStatus,
    Reservation,
    ReservationChange,
    ReservationStatus,
    WaitlistEntry,
    WaitlistStatus,
)
from ticketing.domain.rows import EventRow, ReservationRow

SortKey = tuple[Any, int]


class _Rows:
    """A table's rows read as named tuples of its columns, not as ORM objects: for the hot
    reads, which only read them (see `ticketing.domain.rows`)."""

    def __init__(self, model: type[SQLModel]) -> None:
        columns = model.__table__.columns  # type: ignore[attr-defined]
        self.select: sa.Select[Any] = sa.select(*columns)
        # Named tuples: reading a Core row's attribute by name cost twice an ORM object's.
        row = namedtuple(f"{model.__name__}Row", [column.name for column in columns])  # type: ignore[misc]
        self._make: Callable[[Iterable[Any]], Any] = row._make

    def read(self, session: Session, query: sa.Select[Any]) -> list[Any]:
        return list(map(self._make, session.connection().execute(query)))


_EVENT_ROWS = _Rows(Event)
_RESERVATION_ROWS = _Rows(Reservation)


class EventOrder(enum.StrEnum):
    STARTS_AT_ASC = "STARTS_AT_ASC"
    STARTS_AT_DESC = "STARTS_AT_DESC"
    NAME_ASC = "NAME_ASC"

    @property
    def column(self) -> Mapped[Any]:
        if self is EventOrder.NAME_ASC:
            return col(Event.name)
        return col(Event.starts_at)

    @property
    def descending(self) -> bool:
        return self is EventOrder.STARTS_AT_DESC

    def sort_key(self, event: Event) -> SortKey:
        assert event.id is not None
        value = event.name if self is EventOrder.NAME_ASC else event.starts_at
        return (value, event.id)


@dataclass(frozen=True)
class EventFilter:
    """With no `starts_after`, only events that have not started are listed."""

    starts_after: datetime | None = None
    starts_before: datetime | None = None
    search: str | None = None
    available_only: bool = False


def list_events(
    session: Session, where: EventFilter, order: EventOrder, after: SortKey | None, limit: int
) -> Sequence[Event]:
    key = sa.tuple_(order.column, col(Event.id))
    query = select(Event).where(*_event_conditions(where))
    if after is not None:
        query = query.where(
            key < sa.tuple_(*after) if order.descending else key > sa.tuple_(*after)
        )
    direction = sa.desc if order.descending else sa.asc
    return session.exec(
        query.order_by(direction(order.column), direction(col(Event.id))).limit(limit)
    ).all()


def count_events(session: Session, where: EventFilter) -> int:
    return _count(
        session, select(sa.func.count()).select_from(Event).where(*_event_conditions(where))
    )


def events_by_id(session: Session, ids: Sequence[int]) -> dict[int, EventRow]:
    events = _EVENT_ROWS.read(session, _EVENT_ROWS.select.where(col(Event.id).in_(ids)))
    return {event.id: event for event in events if event.id is not None}


def list_reservations(
    session: Session,
    *,
    customer_id: str | None = None,
    event_id: int | None = None,
    status: ReservationStatus | None = None,
    after_id: int | None = None,
    limit: int,
) -> Sequence[ReservationRow]:
    """Newest first."""
    query = _RESERVATION_ROWS.select.where(
        *_equal(Reservation, customer_id=customer_id, event_id=event_id, status=status)
    )
    if after_id is not None:
        query = query.where(col(Reservation.id) < after_id)
    return _RESERVATION_ROWS.read(session, query.order_by(col(Reservation.id).desc()).limit(limit))


def count_reservations(
    session: Session,
    *,
    customer_id: str | None = None,
    event_id: int | None = None,
    status: ReservationStatus | None = None,
) -> int:
    return _count(
        session,
        select(sa.func.count())
        .select_from(Reservation)
        .where(*_equal(Reservation, customer_id=customer_id, event_id=event_id, status=status)),
    )


def reservations_by_id(session: Session, ids: Sequence[int]) -> dict[int, Reservation]:
    reservations = session.exec(select(Reservation).where(col(Reservation.id).in_(ids))).all()
    return {r.id: r for r in reservations if r.id is not None}


def reservations_changed_since(
    session: Session, customer_ids: Sequence[str], since: datetime
) -> Sequence[Reservation]:
    """The customers' reservations changed at or after `since`."""
    return session.exec(
        select(Reservation).where(
            col(Reservation.customer_id).in_(customer_ids), col(Reservation.updated_at) >= since
        )
    ).all()


def history_pages(
    session: Session, reservation_ids: Sequence[int], *, after_id: int | None, limit: int
) -> dict[int, list[ReservationChange]]:
    """A page of each reservation's changes: at most `limit` after the change `after_id`,
    oldest first, in one query for all the reservations."""
    conditions: list[sa.ColumnElement[bool]] = [
        col(ReservationChange.reservation_id).in_(reservation_ids)
    ]
    if after_id is not None:
        conditions.append(col(ReservationChange.id) > after_id)
    numbered = (
        select(
            ReservationChange,
            sa.func.row_number()
            .over(
                partition_by=col(ReservationChange.reservation_id),
                order_by=col(ReservationChange.id),
            )
            .label("position"),
        )
        .where(*conditions)
        .subquery()
    )
    change = aliased(ReservationChange, numbered)
    changes = session.exec(
        select(change)
        .where(numbered.c.position <= limit)
        .order_by(numbered.c.reservation_id, numbered.c.id)
    ).all()
    by_reservation: dict[int, list[ReservationChange]] = defaultdict(list)
    for found in changes:
        by_reservation[found.reservation_id].append(found)
    return by_reservation


def count_history(session: Session, reservation_ids: Sequence[int]) -> dict[int, int]:
    counts = session.exec(
        select(col(ReservationChange.reservation_id), sa.func.count())
        .where(col(ReservationChange.reservation_id).in_(reservation_ids))
        .group_by(col(ReservationChange.reservation_id))
    ).all()
    return {reservation_id: int(count) for reservation_id, count in counts}


def waitlist_lengths(session: Session, event_ids: Sequence[int]) -> dict[int, int]:
    """How many entries wait for each event."""
    counts = session.exec(
        select(col(WaitlistEntry.event_id), sa.func.count())
        .where(
            col(WaitlistEntry.event_id).in_(event_ids),
            col(WaitlistEntry.status) == WaitlistStatus.WAITING,
        )
        .group_by(col(WaitlistEntry.event_id))
    ).all()
    return {event_id: int(count) for event_id, count in counts}


def waitlist_positions(session: Session, entry_ids: Sequence[int]) -> dict[int, int]:
    """The 1-based place of each WAITING entry among its event's waiting entries: one pass
    over those events' queues (a count per entry would cost a page of 100 entries far back in
    a long queue about 100 times the queue)."""
    events = select(WaitlistEntry.event_id).where(col(WaitlistEntry.id).in_(entry_ids))
    ranked = (
        select(
            col(WaitlistEntry.id),
            sa.func.row_number()
            .over(partition_by=col(WaitlistEntry.event_id), order_by=col(WaitlistEntry.id))
            .label("position"),
        )
        .where(
            col(WaitlistEntry.event_id).in_(events),
            col(WaitlistEntry.status) == WaitlistStatus.WAITING,
        )
        .subquery()
    )
    found = session.exec(
        select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(entry_ids))
    ).all()
    return {entry_id: int(position) for entry_id, position in found}


def waitlist_entries_by_id(session: Session, ids: Sequence[int]) -> dict[int, WaitlistEntry]:
    entries = session.exec(select(WaitlistEntry).where(col(WaitlistEntry.id).in_(ids))).all()
    return {entry.id: entry for entry in entries if entry.id is not None}


def list_waitlist(
    session: Session,
    *,
    event_id: int | None = None,
    customer_id: str | None = None,
    status: WaitlistStatus | None = None,
    after_id: int | None = None,
    limit: int,
) -> Sequence[WaitlistEntry]:
    """An event's entries in the order of joining, or a customer's newest first."""
    oldest_first = event_id is not None
    query = select(WaitlistEntry).where(
        *_equal(WaitlistEntry, event_id=event_id, customer_id=customer_id, status=status)
    )
    if after_id is not None:
        query = query.where(
            col(WaitlistEntry.id) > after_id if oldest_first else col(WaitlistEntry.id) < after_id
        )
    order = col(WaitlistEntry.id).asc() if oldest_first else col(WaitlistEntry.id).desc()
    return session.exec(query.order_by(order).limit(limit)).all()


def count_waitlist(
    session: Session,
    *,
    event_id: int | None = None,
    customer_id: str | None = None,
    status: WaitlistStatus | None = None,
) -> int:
    return _count(
        session,
        select(sa.func.count())
        .select_from(WaitlistEntry)
        .where(*_equal(WaitlistEntry, event_id=event_id, customer_id=customer_id, status=status)),
    )


def _event_conditions(where: EventFilter) -> list[sa.ColumnElement[bool]]:
    conditions = [
        col(Event.starts_at) > (where.starts_after if where.starts_after else clock.now())
    ]
    if where.starts_before is not None:
        conditions.append(col(Event.starts_at) < where.starts_before)
    if where.search:
        conditions.append(
            sa.or_(
                col(Event.name).icontains(where.search, autoescape=True),
                col(Event.venue).icontains(where.search, autoescape=True),
            )
        )
    if where.available_only:
        conditions += [col(Event.status) == EventStatus.ON_SALE, col(Event.tickets_available) > 0]
    return conditions


def _equal(table: type[SQLModel], **wanted: object) -> list[sa.ColumnElement[bool]]:
    """Conditions that the given columns equal their values; None means any value."""
    return [getattr(table, name) == value for name, value in wanted.items() if value is not None]


def _count(session: Session, query: Any) -> int:
    return int(session.exec(query).one())
