"""The waitlist: entries, joining and leaving, and the lists of them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, TypeAlias, cast

import strawberry

from ticketing.api.context import Info
from ticketing.api.errors import (
    CustomerLimitReached,
    Error,
    EventCancelled,
    EventStarted,
    IdempotencyKeyReused,
    InvalidQuantity,
    NotFound,
    TicketsAvailable,
    not_found,
)
from ticketing.api.ids import key_of
from ticketing.api.mutations import IDEMPOTENCY_KEY_DESCRIPTION, at_most_once, attempt
from ticketing.api.pagination import Connection
from ticketing.api.types import Event, Node, Reservation, event_rows_connection
from ticketing.domain import catalog, models, waitlist
from ticketing.domain.operation import Operation
from ticketing.domain.rows import EventRow


@strawberry.enum(description="Where a waitlist entry stands.")
class WaitlistStatus(enum.Enum):
    WAITING = strawberry.enum_value(
        "WAITING", description="Waiting for tickets, in the order of joining."
    )
    OFFERED = strawberry.enum_value(
        "OFFERED",
        description="Served: tickets are held for the customer in `reservation` (HELD until "
        "confirmed or expired).",
    )
    LEFT = strawberry.enum_value("LEFT", description="The customer left the waitlist.")
    CLOSED = strawberry.enum_value(
        "CLOSED", description="The event was cancelled while the entry was waiting."
    )


@strawberry.type(
    description="A customer waiting for tickets of a sold-out event. When tickets are freed "
    "(a cancellation, a decrease, an expired hold, more capacity), waiting entries are served "
    "in the order they joined, skipping any whose whole quantity doesn't fit or that would "
    "take the customer past the event's limit: a served entry gets a HELD reservation (the "
    "event's hold time, or 30 minutes) to confirm. Visible to its customer and to the "
    "event's organizer."
)
class WaitlistEntry(Node):
    event: Event = strawberry.field(description="The event waited for.")
    customer: str = strawberry.field(description="The customer waiting (their token's `sub`).")
    quantity: int = strawberry.field(description="How many tickets the customer waits for.")
    status: WaitlistStatus = strawberry.field(description="Where the entry stands.")
    created_at: datetime = strawberry.field(description="When the customer joined.")
    reservation_key: strawberry.Private[int | None]

    @classmethod
    def from_model(cls, entry: models.WaitlistEntry, event: EventRow) -> WaitlistEntry:
        assert entry.id is not None
        assert entry.created_at is not None
        return cls(
            key=entry.id,
            event=Event.from_model(event),
            customer=entry.customer_id,
            quantity=entry.quantity,
            status=WaitlistStatus[entry.status.name],
            created_at=entry.created_at,
            reservation_key=entry.reservation_id,
        )

    @strawberry.field(
        description="The entry's place among the event's waiting entries, from 1 (served "
        "next); null unless WAITING."
    )
    async def position(self, info: Info) -> int | None:
        if self.status is not WaitlistStatus.WAITING:
            return None
        return await info.context.loaders.waitlist_position.load(self.key)

    @strawberry.field(description="The offer: the reservation made when the entry was served.")
    async def reservation(self, info: Info) -> Reservation | None:
        if self.reservation_key is None:
            return None
        offer = await info.context.loaders.reservation.load(self.reservation_key)
        assert offer is not None, "reservations are never deleted"
        event = await info.context.loaders.event.load(offer.event_id)
        assert event is not None
        return Reservation.from_model(offer, event)


@strawberry.input(description="Wait for tickets of a sold-out event.")
class JoinWaitlistInput:
    event_id: strawberry.ID = strawberry.field(description="The event's global ID.")
    quantity: int = strawberry.field(
        description="How many tickets to wait for; at least 1, at most the event's capacity. "
        "They are offered all together or not at all."
    )
    idempotency_key: str | None = strawberry.field(
        default=None, description=IDEMPOTENCY_KEY_DESCRIPTION
    )


@strawberry.input(description="Stop waiting.")
class LeaveWaitlistInput:
    entry_id: strawberry.ID = strawberry.field(description="The waitlist entry's global ID.")


@strawberry.type(description="A waitlist entry after a successful change.")
class WaitlistPayload:
    entry: WaitlistEntry = strawberry.field(description="The entry as it is now.")
    event: Event = strawberry.field(description="Its event.")

    @classmethod
    def from_placement(cls, done: waitlist.Placement) -> WaitlistPayload:
        return cls(
            entry=WaitlistEntry.from_model(done.entry, done.event),
            event=Event.from_model(done.event),
        )


JoinWaitlistResult: TypeAlias = Annotated[
    WaitlistPayload
    | NotFound
    | InvalidQuantity
    | CustomerLimitReached
    | EventCancelled
    | EventStarted
    | TicketsAvailable
    | IdempotencyKeyReused,
    strawberry.union("JoinWaitlistResult", description="The new entry, or why it was refused."),
]
LeaveWaitlistResult: TypeAlias = Annotated[
    WaitlistPayload | NotFound,
    strawberry.union("LeaveWaitlistResult", description="The entry after leaving, or NotFound."),
]


@strawberry.type
class WaitlistMutations:
    @strawberry.mutation(
        description="Join a sold-out event's waitlist. Requires a token. Refused with "
        "TicketsAvailable while enough tickets are on sale (reserve them instead)."
    )
    async def join_waitlist(
        self,
        info: Info,
        input: Annotated[
            JoinWaitlistInput, strawberry.argument(description="The event and how many tickets.")
        ],
    ) -> JoinWaitlistResult:
        actor = info.context.require_viewer()
        event_id = key_of(input.event_id, "Event")
        if event_id is None:
            return not_found(input.event_id, "Event")
        operation = at_most_once(
            info,
            waitlist.join(event_id=event_id, actor=actor, quantity=input.quantity),
            input.idempotency_key,
            "joinWaitlist",
            input.event_id,
            input.quantity,
        )
        return cast(JoinWaitlistResult, await _place(info, operation))

    @strawberry.mutation(
        description="Leave a waitlist. Leaving an entry that no longer waits (served, left or "
        "closed) returns it unchanged; a served entry's offer stays (cancel it to give the "
        "tickets back)."
    )
    async def leave_waitlist(
        self,
        info: Info,
        input: Annotated[LeaveWaitlistInput, strawberry.argument(description="The entry.")],
    ) -> LeaveWaitlistResult:
        actor = info.context.require_viewer()
        entry_id = key_of(input.entry_id, "WaitlistEntry")
        if entry_id is None:
            return not_found(input.entry_id, "WaitlistEntry")
        operation = waitlist.leave(entry_id=entry_id, actor=actor)
        return cast(LeaveWaitlistResult, await _place(info, operation))


async def _place(info: Info, operation: Operation[waitlist.Placement]) -> WaitlistPayload | Error:
    return await attempt(
        info, operation, answer=WaitlistPayload.from_placement, changed=lambda done: done.event
    )


async def waitlist_connection(
    info: Info,
    *,
    first: int | None,
    after: str | None,
    event_id: int | None = None,
    customer_id: str | None = None,
    status: WaitlistStatus | None = None,
) -> Connection[WaitlistEntry]:
    """An event's entries in the order of joining, or a customer's newest first."""
    wanted = models.WaitlistStatus[status.name] if status else None
    return await event_rows_connection(
        info,
        first=first,
        after=after,
        page=lambda session, after_id, limit: catalog.list_waitlist(
            session,
            event_id=event_id,
            customer_id=customer_id,
            status=wanted,
            after_id=after_id,
            limit=limit,
        ),
        count=lambda session: catalog.count_waitlist(
            session, event_id=event_id, customer_id=customer_id, status=wanted
        ),
        to_node=WaitlistEntry.from_model,
    )


async def visible_entry(info: Info, key: int) -> WaitlistEntry | None:
    """The entry, if the viewer may see it: its customer, or its event's organizer."""
    viewer = info.context.viewer
    if viewer is None:
        return None
    entry = await info.context.loaders.waitlist_entry.load(key)
    if entry is None:
        return None
    event = await info.context.loaders.event.load(entry.event_id)
    assert event is not None, "an entry's event is never deleted"
    if entry.customer_id != viewer.customer_id and not viewer.manages(event):
        return None
    return WaitlistEntry.from_model(entry, event)
