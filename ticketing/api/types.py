"""Object types, enums and the Node interface."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, TypeVar

import strawberry
from sqlmodel import Session

from ticketing.api.context import HistoryPage, Info
from ticketing.api.ids import to_global_id
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
from ticketing.domain import catalog, models
from ticketing.domain.rows import EventRow, ReservationRow

if TYPE_CHECKING:
    from ticketing.api.waitlist import WaitlistEntry

RowT = TypeVar("RowT", ReservationRow, models.WaitlistEntry)
NodeT = TypeVar("NodeT")


@strawberry.enum(description="Whether an event is selling tickets.")
class EventStatus(enum.Enum):
    ON_SALE = strawberry.enum_value(
        "ON_SALE", description="Tickets can be reserved until the event starts."
    )
    CANCELLED = strawberry.enum_value(
        "CANCELLED", description="Cancelled by an organizer; all its reservations were cancelled."
    )


@strawberry.enum(description="Whether a reservation holds tickets.")
class ReservationStatus(enum.Enum):
    HELD = strawberry.enum_value(
        "HELD",
        description="Holds its tickets until `expiresAt`; `confirmReservation` makes it final. "
        "Made on events with a hold time, and for waitlist offers.",
    )
    ACTIVE = strawberry.enum_value("ACTIVE", description="Holds its tickets; final.")
    CANCELLED = strawberry.enum_value(
        "CANCELLED", description="Cancelled; its tickets went back on sale."
    )
    EXPIRED = strawberry.enum_value(
        "EXPIRED",
        description="Its hold ran out before it was confirmed; its tickets went back (to the "
        "waitlist first, then on sale).",
    )


@strawberry.enum(description="What a change did to a reservation.")
class ReservationChangeKind(enum.Enum):
    CREATED = strawberry.enum_value("CREATED", description="The reservation was made.")
    INCREASED = strawberry.enum_value("INCREASED", description="Tickets were added.")
    DECREASED = strawberry.enum_value("DECREASED", description="Tickets were given back.")
    CANCELLED = strawberry.enum_value(
        "CANCELLED", description="The reservation was cancelled, releasing all its tickets."
    )
    CONFIRMED = strawberry.enum_value(
        "CONFIRMED", description="The hold was confirmed: the reservation is final."
    )
    EXPIRED = strawberry.enum_value(
        "EXPIRED", description="The hold ran out before it was confirmed, releasing its tickets."
    )
    OFFERED = strawberry.enum_value(
        "OFFERED",
        description="The reservation was made as a waitlist offer: tickets held for a customer "
        "who was waiting.",
    )


@strawberry.enum(
    description="Who made a change, by role. An organizer's or admin's identity is never shown."
)
class ChangeActor(enum.Enum):
    CUSTOMER = strawberry.enum_value(
        "CUSTOMER", description="The customer who holds the reservation."
    )
    ORGANIZER = strawberry.enum_value("ORGANIZER", description="The organizer of its event.")
    ADMIN = strawberry.enum_value(
        "ADMIN", description="An administrator of the service, on the organizer's behalf."
    )
    CHECKOUT = strawberry.enum_value(
        "CHECKOUT", description="A payment backend, confirming the hold after payment."
    )
    SYSTEM = strawberry.enum_value(
        "SYSTEM", description="The service itself: a hold that ran out, a waitlist offer."
    )


@strawberry.interface(description="An object with a globally unique, opaque ID (Relay).")
class Node:
    key: strawberry.Private[int]

    # Computed when asked for: most queries of a page of nodes don't ask.
    @strawberry.field(description="The object's global ID; use it with `node(id:)`.")
    def id(self) -> strawberry.ID:
        return to_global_id(type(self).__name__, self.key)


@strawberry.type(description="One line of a reservation's history.")
class ReservationChange:
    kind: ReservationChangeKind = strawberry.field(description="What the change did.")
    quantity: int = strawberry.field(
        description="Tickets involved: the quantity created, added, given back or released."
    )
    actor: ChangeActor = strawberry.field(description="Who made the change, by role.")
    created_at: datetime = strawberry.field(description="When the change was made.")

    @classmethod
    def from_model(cls, change: models.ReservationChange) -> ReservationChange:
        assert change.created_at is not None
        return cls(
            kind=ReservationChangeKind[change.kind.name],
            quantity=change.quantity,
            actor=ChangeActor[change.actor_role.name],
            created_at=change.created_at,
        )


@strawberry.type(description="Something people attend, with a fixed number of tickets.")
class Event(Node):
    owner_id: strawberry.Private[str]
    name: str = strawberry.field(description="The event's name.")
    description: str = strawberry.field(description="A longer text about the event; may be empty.")
    venue: str = strawberry.field(description="Where the event takes place.")
    starts_at: datetime = strawberry.field(
        description="When the event starts; from then on no tickets are sold or changed."
    )
    ends_at: datetime | None = strawberry.field(description="When the event ends, if known.")
    capacity: int = strawberry.field(description="The total number of tickets.")
    tickets_available: int = strawberry.field(
        description="Tickets on sale: not held by any HELD or ACTIVE reservation."
    )
    max_tickets_per_customer: int | None = strawberry.field(
        description="The most tickets one customer may hold for this event over all their "
        "HELD and ACTIVE reservations; null means no limit."
    )
    hold_minutes: int | None = strawberry.field(
        description="How long a new reservation holds its tickets (HELD) before it must be "
        "confirmed, 1 to 120 minutes; null: reservations are final (ACTIVE) at once."
    )
    status: EventStatus = strawberry.field(description="Whether the event is on sale.")
    created_at: datetime = strawberry.field(description="When the event was created.")
    updated_at: datetime = strawberry.field(description="When the event last changed.")

    @classmethod
    def from_model(cls, event: EventRow) -> Event:
        assert event.id is not None
        assert event.created_at is not None
        assert event.updated_at is not None
        return cls(
            key=event.id,
            owner_id=event.owner_id,
            name=event.name,
            description=event.description,
            venue=event.venue,
            starts_at=event.starts_at,
            ends_at=event.ends_at,
            capacity=event.capacity,
            tickets_available=event.tickets_available,
            max_tickets_per_customer=event.max_tickets_per_customer,
            hold_minutes=event.hold_minutes,
            status=EventStatus[event.status.name],
            created_at=event.created_at,
            updated_at=event.updated_at,
        )

    @strawberry.field(
        description="The event's reservations, newest first. Only for its organizer (and "
        "admins); null for everyone else, as if there were none to show."
    )
    async def reservations(
        self,
        info: Info,
        first: First = DEFAULT_PAGE_SIZE,
        after: After = None,
        status: Annotated[
            ReservationStatus | None,
            strawberry.argument(description="Only reservations with this status."),
        ] = None,
    ) -> Connection[Reservation] | None:
        viewer = info.context.viewer
        if viewer is None or not viewer.manages(self):
            return None
        return await reservation_connection(
            info, first=first, after=after, status=status, event_id=self.key
        )

    @strawberry.field(description="How many customers are waiting for tickets (WAITING entries).")
    async def waitlist_length(self, info: Info) -> int:
        return await info.context.loaders.waitlist_length.load(self.key)

    @strawberry.field(
        description="The event's waitlist in the order of joining, every status. Only for its "
        "organizer (and admins); null for everyone else."
    )
    async def waitlist(
        self, info: Info, first: First = DEFAULT_PAGE_SIZE, after: After = None
    ) -> Connection[Annotated[WaitlistEntry, strawberry.lazy("ticketing.api.waitlist")]] | None:
        from ticketing.api.waitlist import waitlist_connection

        viewer = info.context.viewer
        if viewer is None or not viewer.manages(self):
            return None
        return await waitlist_connection(info, first=first, after=after, event_id=self.key)


@strawberry.type(description="A customer's hold on a number of tickets for one event.")
class Reservation(Node):
    quantity: int = strawberry.field(description="How many tickets the reservation holds.")
    status: ReservationStatus = strawberry.field(
        description="Whether the reservation holds its tickets."
    )
    customer: str = strawberry.field(
        description="The customer who made it: the subject (`sub`) of their token."
    )
    created_at: datetime = strawberry.field(description="When the reservation was made.")
    updated_at: datetime = strawberry.field(description="When the reservation last changed.")
    cancelled_at: datetime | None = strawberry.field(
        description="When the reservation was cancelled; null unless CANCELLED."
    )
    expires_at: datetime | None = strawberry.field(
        description="When the hold runs out unless confirmed first; set only while HELD."
    )
    confirmed_at: datetime | None = strawberry.field(
        description="When the reservation became final (ACTIVE): when it was made on an event "
        "without a hold time, else when it was confirmed. Null while HELD, and for holds that "
        "expired or were cancelled before confirmation."
    )
    event: Event = strawberry.field(description="The event the tickets are for.")

    @classmethod
    def from_model(cls, reservation: ReservationRow, event: EventRow) -> Reservation:
        """With its event, which every caller has at hand: a plain field resolves a whole page
        of reservations without an awaitable per item."""
        assert reservation.id is not None
        assert reservation.created_at is not None
        assert reservation.updated_at is not None
        return cls(
            key=reservation.id,
            event=Event.from_model(event),
            quantity=reservation.quantity,
            status=ReservationStatus[reservation.status.name],
            customer=reservation.customer_id,
            created_at=reservation.created_at,
            updated_at=reservation.updated_at,
            cancelled_at=reservation.cancelled_at,
            expires_at=reservation.expires_at
            if reservation.status == models.ReservationStatus.HELD
            else None,
            confirmed_at=reservation.confirmed_at,
        )

    @strawberry.field(description="The changes made to the reservation, oldest first.")
    async def history(
        self, info: Info, first: First = DEFAULT_PAGE_SIZE, after: After = None
    ) -> Connection[ReservationChange]:
        size = page_size(first)
        page = HistoryPage(self.key, id_position(after) if after is not None else None, size + 1)
        changes = await info.context.loaders.history.load(page)

        async def count() -> int:
            return await info.context.loaders.history_count.load(self.key)

        return build_connection(
            changes,
            size,
            to_node=ReservationChange.from_model,
            position_of=lambda change: [change.id],
            count=count,
            after_given=after is not None,
        )


async def reservation_connection(
    info: Info,
    *,
    first: int | None,
    after: str | None,
    status: ReservationStatus | None,
    customer_id: str | None = None,
    event_id: int | None = None,
) -> Connection[Reservation]:
    wanted = models.ReservationStatus[status.name] if status else None
    return await event_rows_connection(
        info,
        first=first,
        after=after,
        page=lambda session, after_id, limit: catalog.list_reservations(
            session,
            customer_id=customer_id,
            event_id=event_id,
            status=wanted,
            after_id=after_id,
            limit=limit,
        ),
        count=lambda session: catalog.count_reservations(
            session, customer_id=customer_id, event_id=event_id, status=wanted
        ),
        to_node=Reservation.from_model,
    )


async def event_rows_connection(
    info: Info,
    *,
    first: int | None,
    after: str | None,
    page: Callable[[Session, int | None, int], Sequence[RowT]],
    count: Callable[[Session], int],
    to_node: Callable[[RowT, EventRow], NodeT],
) -> Connection[NodeT]:
    """A page of rows that each belong to an event (reservations, waitlist entries), listed by
    id: `page(session, after_id, limit)` reads them, their events come in the same round trip
    to the database thread."""
    size = page_size(first)
    after_id = id_position(after) if after is not None else None

    def rows_and_events(session: Session) -> tuple[Sequence[RowT], dict[int, EventRow]]:
        rows = page(session, after_id, size + 1)
        return rows, catalog.events_by_id(session, sorted({row.event_id for row in rows}))

    rows, events = await info.context.db.run_autocommit(rows_and_events)

    async def total() -> int:
        return await info.context.db.run_autocommit(count)

    return event_rows_page(
        rows, events, size, to_node=to_node, count=total, after_given=after is not None
    )


def event_rows_page(
    rows: Sequence[RowT],
    events: Mapping[int, EventRow],
    size: int,
    *,
    to_node: Callable[[RowT, EventRow], NodeT],
    count: Callable[[], Awaitable[int]],
    after_given: bool,
) -> Connection[NodeT]:
    """A page of rows with their events, from the rows loaded for it."""
    return build_connection(
        rows,
        size,
        to_node=lambda row: to_node(row, events[row.event_id]),
        position_of=lambda row: [row.id],
        count=count,
        after_given=after_given,
    )


def id_position(cursor: str) -> int:
    """The row id inside a cursor of a list ordered by id."""
    match decode_cursor(cursor):
        case [int() as row_id]:
            return row_id
    raise invalid_cursor()
