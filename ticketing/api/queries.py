"""The Query root."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import strawberry

from ticketing.api.context import Info
from ticketing.api.errors import ErrorCode, request_error
from ticketing.api.ids import key_of, parse_global_id
from ticketing.api.pagination import (
    DEFAULT_PAGE_SIZE,
    After,
    Connection,
    First,
    build_connection,
    decode_cursor,
    invalid_cursor,
    page_size,
)
from ticketing.api.types import (
    Event,
    Node,
    Reservation,
    ReservationStatus,
    reservation_connection,
)
from ticketing.api.waitlist import WaitlistEntry, WaitlistStatus, visible_entry, waitlist_connection
from ticketing.domain import catalog
from ticketing.domain.times import to_utc

MAX_SEARCH_LENGTH = 200


@strawberry.enum(description="Orders for the `events` list.")
class EventOrder(enum.Enum):
    STARTS_AT_ASC = strawberry.enum_value("STARTS_AT_ASC", description="Soonest first.")
    STARTS_AT_DESC = strawberry.enum_value("STARTS_AT_DESC", description="Latest first.")
    NAME_ASC = strawberry.enum_value("NAME_ASC", description="By name, A to Z.")


@strawberry.input(description="Narrows the `events` list; all given conditions must hold.")
class EventFilter:
    starts_after: datetime | None = strawberry.field(
        default=None,
        description="Only events starting after this time. Defaults to now: events that have "
        "started are left out unless this is set to an earlier time.",
    )
    starts_before: datetime | None = strawberry.field(
        default=None, description="Only events starting before this time."
    )
    search: str | None = strawberry.field(
        default=None,
        description="Only events whose name or venue contains this text (case-insensitive).",
    )
    available_only: bool = strawberry.field(
        default=False, description="Only events on sale with at least one ticket available."
    )

    def to_domain(self) -> catalog.EventFilter:
        if self.search is not None and (
            len(self.search) > MAX_SEARCH_LENGTH or "\x00" in self.search
        ):
            raise request_error(
                ErrorCode.BAD_USER_INPUT,
                f"`search` must be at most {MAX_SEARCH_LENGTH} characters, without NUL.",
            )
        return catalog.EventFilter(
            starts_after=_filter_time("startsAfter", self.starts_after),
            starts_before=_filter_time("startsBefore", self.starts_before),
            search=self.search,
            available_only=self.available_only,
        )


def _filter_time(name: str, moment: datetime | None) -> datetime | None:
    try:
        return None if moment is None else to_utc(moment)
    except ValueError as error:
        raise request_error(ErrorCode.BAD_USER_INPUT, f"`{name}`: {error}") from error


@strawberry.type(description="Read the catalogue of events and your reservations.")
class Query:
    @strawberry.field(description="Fetch any object by its global ID; null if none is visible.")
    async def node(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="A global ID.")],
    ) -> Node | None:
        parsed = parse_global_id(id)
        if parsed is None:
            return None
        type_name, key = parsed
        if type_name == "Event":
            return await _event(info, key)
        if type_name == "Reservation":
            return await _reservation(info, key)
        if type_name == "WaitlistEntry":
            return await visible_entry(info, key)
        return None

    @strawberry.field(description="An event by ID; null if there is none.")
    async def event(
        self,
        info: Info,
        id: Annotated[strawberry.ID, strawberry.argument(description="The event's global ID.")],
    ) -> Event | None:
        key = key_of(id, "Event")
        return None if key is None else await _event(info, key)

    @strawberry.field(
        description="A reservation by ID; null if there is none or it is someone else's "
        "(its event's organizer sees it too)."
    )
    async def reservation(
        self,
        info: Info,
        id: Annotated[
            strawberry.ID, strawberry.argument(description="The reservation's global ID.")
        ],
    ) -> Reservation | None:
        key = key_of(id, "Reservation")
        return None if key is None else await _reservation(info, key)

    @strawberry.field(
        description="Browse events. By default: events that have not started, soonest first."
    )
    async def events(
        self,
        info: Info,
        first: First = DEFAULT_PAGE_SIZE,
        after: After = None,
        filter: Annotated[
            EventFilter | None, strawberry.argument(description="Conditions on the events.")
        ] = None,
        order_by: Annotated[
            EventOrder | None,
            strawberry.argument(description="The order of the list; null means STARTS_AT_ASC."),
        ] = EventOrder.STARTS_AT_ASC,
    ) -> Connection[Event]:
        size = page_size(first)
        order = catalog.EventOrder[(order_by or EventOrder.STARTS_AT_ASC).name]
        position = _event_position(after, order) if after is not None else None
        where = (filter or EventFilter()).to_domain()
        rows = await info.context.db.run_autocommit(
            lambda session: catalog.list_events(session, where, order, position, size + 1)
        )

        async def count() -> int:
            return await info.context.db.run_autocommit(
                lambda session: catalog.count_events(session, where)
            )

        return build_connection(
            rows,
            size,
            to_node=Event.from_model,
            position_of=lambda row: [order.value, *_json_key(order.sort_key(row))],
            count=count,
            after_given=after is not None,
        )

    @strawberry.field(description="The viewer's reservations, newest first. Requires a token.")
    async def my_reservations(
        self,
        info: Info,
        first: First = DEFAULT_PAGE_SIZE,
        after: After = None,
        status: Annotated[
            ReservationStatus | None,
            strawberry.argument(description="Only reservations with this status."),
        ] = None,
    ) -> Connection[Reservation]:
        viewer = info.context.require_viewer()
        return await reservation_connection(
            info, first=first, after=after, status=status, customer_id=viewer.customer_id
        )

    @strawberry.field(description="The viewer's waitlist entries, newest first. Requires a token.")
    async def my_waitlist_entries(
        self,
        info: Info,
        first: First = DEFAULT_PAGE_SIZE,
        after: After = None,
        status: Annotated[
            WaitlistStatus | None, strawberry.argument(description="Only entries with this status.")
        ] = None,
    ) -> Connection[WaitlistEntry]:
        viewer = info.context.require_viewer()
        return await waitlist_connection(
            info, first=first, after=after, status=status, customer_id=viewer.customer_id
        )


async def _event(info: Info, key: int) -> Event | None:
    event = await info.context.loaders.event.load(key)
    return None if event is None else Event.from_model(event)


async def _reservation(info: Info, key: int) -> Reservation | None:
    viewer = info.context.viewer
    if viewer is None:
        return None
    reservation = await info.context.loaders.reservation.load(key)
    if reservation is None:
        return None
    event = await info.context.loaders.event.load(reservation.event_id)
    assert event is not None, "a reservation's event is never deleted"
    if not viewer.may_access(reservation, event):
        return None
    return Reservation.from_model(reservation, event)


def _json_key(key: catalog.SortKey) -> list[Any]:
    value, row_id = key
    return [value.isoformat() if isinstance(value, datetime) else value, row_id]


def _event_position(cursor: str, order: catalog.EventOrder) -> catalog.SortKey:
    match decode_cursor(cursor):
        case [str() as order_name, str() as value, int() as row_id] if order_name == order.value:
            if order is catalog.EventOrder.NAME_ASC:
                return (value, row_id)
            try:
                return (to_utc(datetime.fromisoformat(value)), row_id)
            except ValueError:
                pass
    raise invalid_cursor()
