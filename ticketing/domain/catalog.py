"""Reads: event listings, reservations and history, with keyset pagination.

A page is asked for with the sort key of the last row already seen (`after`), so pages stay
stable while rows are inserted before them, and every page costs one index range scan.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, aliased
from sqlmodel import Session, col, select

from ticketing.domain import clock
from ticketing.domain.models import (
    Event,
    EventStatus,
    Reservation,
    ReservationChange,
    ReservationStatus,
)

SortKey = tuple[Any, int]


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


def events_by_id(session: Session, ids: Sequence[int]) -> dict[int, Event]:
    events = session.exec(select(Event).where(col(Event.id).in_(ids))).all()
    return {event.id: event for event in events if event.id is not None}


def list_reservations(
    session: Session,
    *,
    customer_id: str | None = None,
    event_id: int | None = None,
    status: ReservationStatus | None = None,
    after_id: int | None = None,
    limit: int,
) -> Sequence[Reservation]:
    """Newest first."""
    query = select(Reservation).where(*_reservation_conditions(customer_id, event_id, status))
    if after_id is not None:
        query = query.where(col(Reservation.id) < after_id)
    return session.exec(query.order_by(col(Reservation.id).desc()).limit(limit)).all()


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
        .where(*_reservation_conditions(customer_id, event_id, status)),
    )


def reservations_by_id(session: Session, ids: Sequence[int]) -> dict[int, Reservation]:
    reservations = session.exec(select(Reservation).where(col(Reservation.id).in_(ids))).all()
    return {r.id: r for r in reservations if r.id is not None}


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


def _reservation_conditions(
    customer_id: str | None, event_id: int | None, status: ReservationStatus | None
) -> list[sa.ColumnElement[bool]]:
    conditions = []
    if customer_id is not None:
        conditions.append(col(Reservation.customer_id) == customer_id)
    if event_id is not None:
        conditions.append(col(Reservation.event_id) == event_id)
    if status is not None:
        conditions.append(col(Reservation.status) == status)
    return conditions


def _count(session: Session, query: Any) -> int:
    return int(session.exec(query).one())
