"""The Mutation root: one `input` argument each, results as unions of a payload and typed errors."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeAlias, cast

import strawberry
from sqlmodel import Session

from ticketing.api.context import Info
from ticketing.api.errors import (
    CustomerLimitReached,
    Error,
    ErrorCode,
    EventCancelled,
    EventStarted,
    IdempotencyKeyReused,
    InvalidEvent,
    InvalidQuantity,
    NotEnoughTickets,
    NotFound,
    ReservationCancelled,
    not_found,
    request_error,
    to_graphql,
)
from ticketing.api.ids import key_of
from ticketing.api.types import Event, Reservation
from ticketing.domain import booking, events, idempotency, models
from ticketing.domain.errors import DomainError


@strawberry.enum(description="How `updateReservation` changes the number of tickets.")
class ReservationOperation(enum.Enum):
    INCREASE = strawberry.enum_value(
        "INCREASE", description="Add `quantity` tickets to the reservation."
    )
    DECREASE = strawberry.enum_value(
        "DECREASE",
        description="Give back `quantity` tickets; at least one must remain (cancel instead).",
    )


IDEMPOTENCY_KEY_DESCRIPTION = (
    "Makes a retry safe: a repeat of this request with the same key (by the same customer) "
    "returns the first answer and changes nothing, even when the repeats arrive at once. "
    "Any string of 1 to 255 printable ASCII characters, unique per request (a UUID is a good "
    "choice); the same key with a different input is refused with IdempotencyKeyReused. "
    "Keys are kept for at least 24 hours. Given here, it wins over the `Idempotency-Key` HTTP "
    "header, which otherwise applies to every keyed mutation of the request. A refused "
    "request is not remembered: retrying it tries again."
)


@strawberry.input(description="Reserve tickets for an event.")
class CreateReservationInput:
    event_id: strawberry.ID = strawberry.field(description="The event's global ID.")
    quantity: int = strawberry.field(description="How many tickets to reserve; at least 1.")
    idempotency_key: str | None = strawberry.field(
        default=None, description=IDEMPOTENCY_KEY_DESCRIPTION
    )


@strawberry.input(description="Change the number of tickets in one of your reservations.")
class UpdateReservationInput:
    reservation_id: strawberry.ID = strawberry.field(description="The reservation's global ID.")
    operation: ReservationOperation = strawberry.field(
        description="Whether to add or give back tickets."
    )
    quantity: int = strawberry.field(
        description="How many tickets to add or give back; at least 1."
    )
    idempotency_key: str | None = strawberry.field(
        default=None, description=IDEMPOTENCY_KEY_DESCRIPTION
    )


@strawberry.input(description="Cancel a reservation, releasing its tickets.")
class CancelReservationInput:
    reservation_id: strawberry.ID = strawberry.field(description="The reservation's global ID.")


@strawberry.input(description="A new event. Organizers only.")
class CreateEventInput:
    name: str = strawberry.field(
        description="The event's name: 1 to 200 characters on one line, without control "
        "characters or bidirectional overrides."
    )
    venue: str = strawberry.field(description="Where it takes place; the same rules as `name`.")
    starts_at: datetime = strawberry.field(
        description="When it starts, with a time zone; must be in the future."
    )
    capacity: int = strawberry.field(description="The total number of tickets; 0 or more.")
    description: str = strawberry.field(
        default="",
        description="A longer text about the event, up to 10,000 characters. Newlines and tabs "
        "are allowed; other control characters and bidirectional overrides are not.",
    )
    ends_at: datetime | None = strawberry.field(
        default=None, description="When it ends, after `startsAt`; null if unknown."
    )
    max_tickets_per_customer: int | None = strawberry.field(
        default=None,
        description="The most tickets one customer may hold; at least 1, null for no limit.",
    )


@strawberry.input(
    description="Changes to an event. Its organizer only. Omitted fields keep their value; for "
    "`name`, `venue`, `startsAt`, `capacity` and `description` null also keeps it."
)
class UpdateEventInput:
    event_id: strawberry.ID = strawberry.field(description="The event's global ID.")
    name: str | None = strawberry.field(default=strawberry.UNSET, description="A new name.")
    venue: str | None = strawberry.field(default=strawberry.UNSET, description="A new venue.")
    starts_at: datetime | None = strawberry.field(
        default=strawberry.UNSET, description="A new start time, in the future."
    )
    capacity: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="A new total; not below the tickets already reserved. Availability moves "
        "by the same amount.",
    )
    description: str | None = strawberry.field(
        default=strawberry.UNSET, description="A new description."
    )
    ends_at: datetime | None = strawberry.field(
        default=strawberry.UNSET, description="A new end time; null clears it."
    )
    max_tickets_per_customer: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="A new per-customer limit; null removes the limit. Reservations already "
        "above a lowered limit are kept.",
    )


@strawberry.input(description="Cancel an event and all its active reservations.")
class CancelEventInput:
    event_id: strawberry.ID = strawberry.field(description="The event's global ID.")


@strawberry.type(description="A reservation after a successful change.")
class ReservationPayload:
    reservation: Reservation = strawberry.field(description="The reservation as it is now.")
    event: Event = strawberry.field(description="Its event, showing the new availability.")

    @classmethod
    def from_booking(cls, done: booking.Booking) -> ReservationPayload:
        return cls(
            reservation=Reservation.from_model(done.reservation, done.event),
            event=Event.from_model(done.event),
        )


@strawberry.type(description="An event after a successful change.")
class EventPayload:
    event: Event = strawberry.field(description="The event as it is now.")


CreateReservationResult: TypeAlias = Annotated[
    ReservationPayload
    | NotFound
    | InvalidQuantity
    | NotEnoughTickets
    | CustomerLimitReached
    | EventCancelled
    | EventStarted
    | IdempotencyKeyReused,
    strawberry.union(
        "CreateReservationResult", description="The new reservation, or why it was refused."
    ),
]
UpdateReservationResult: TypeAlias = Annotated[
    ReservationPayload
    | NotFound
    | InvalidQuantity
    | NotEnoughTickets
    | CustomerLimitReached
    | ReservationCancelled
    | EventCancelled
    | EventStarted
    | IdempotencyKeyReused,
    strawberry.union(
        "UpdateReservationResult", description="The changed reservation, or why it was refused."
    ),
]
CancelReservationResult: TypeAlias = Annotated[
    ReservationPayload | NotFound | EventStarted,
    strawberry.union(
        "CancelReservationResult",
        description="The cancelled reservation, or why it can't be cancelled.",
    ),
]
CreateEventResult: TypeAlias = Annotated[
    EventPayload | InvalidEvent,
    strawberry.union("CreateEventResult", description="The new event, or why it was refused."),
]
UpdateEventResult: TypeAlias = Annotated[
    EventPayload | NotFound | InvalidEvent | EventCancelled | EventStarted,
    strawberry.union("UpdateEventResult", description="The changed event, or why it was refused."),
]
CancelEventResult: TypeAlias = Annotated[
    EventPayload | NotFound | EventStarted,
    strawberry.union(
        "CancelEventResult", description="The cancelled event, or why it can't be cancelled."
    ),
]


@strawberry.type(description="Reserve tickets and, as an organizer, run events.")
class Mutation:
    @strawberry.mutation(description="Reserve tickets for an event. Requires a token.")
    async def create_reservation(
        self,
        info: Info,
        input: Annotated[
            CreateReservationInput,
            strawberry.argument(description="The event and how many tickets."),
        ],
    ) -> CreateReservationResult:
        actor = info.context.require_viewer()
        event_id = key_of(input.event_id, "Event")
        if event_id is None:
            return not_found(input.event_id, "Event")
        return cast(
            CreateReservationResult,
            await _book(
                info,
                lambda s: booking.reserve(
                    s, event_id=event_id, actor=actor, quantity=input.quantity
                ),
                keyed=_idempotency(
                    info, input.idempotency_key, "createReservation", input.event_id, input.quantity
                ),
                writes_one_statement=True,
                event_id=event_id,
            ),
        )

    @strawberry.mutation(
        description="Add tickets to, or give tickets back from, one of your reservations."
    )
    async def update_reservation(
        self,
        info: Info,
        input: Annotated[
            UpdateReservationInput,
            strawberry.argument(description="The reservation, the operation and how many tickets."),
        ],
    ) -> UpdateReservationResult:
        actor = info.context.require_viewer()
        reservation_id = key_of(input.reservation_id, "Reservation")
        if reservation_id is None:
            return not_found(input.reservation_id, "Reservation")
        operation = (
            booking.increase
            if input.operation is ReservationOperation.INCREASE
            else booking.decrease
        )
        return cast(
            UpdateReservationResult,
            await _book(
                info,
                lambda s: operation(
                    s, reservation_id=reservation_id, actor=actor, quantity=input.quantity
                ),
                keyed=_idempotency(
                    info,
                    input.idempotency_key,
                    "updateReservation",
                    input.reservation_id,
                    input.operation.name,
                    input.quantity,
                ),
            ),
        )

    @strawberry.mutation(
        description="Cancel a reservation, releasing its tickets. Cancelling a cancelled "
        "reservation returns it unchanged, so retries are safe. An event's organizer may "
        "cancel any of its reservations."
    )
    async def cancel_reservation(
        self,
        info: Info,
        input: Annotated[
            CancelReservationInput, strawberry.argument(description="The reservation to cancel.")
        ],
    ) -> CancelReservationResult:
        actor = info.context.require_viewer()
        reservation_id = key_of(input.reservation_id, "Reservation")
        if reservation_id is None:
            return not_found(input.reservation_id, "Reservation")
        return cast(
            CancelReservationResult,
            await _book(
                info, lambda s: booking.cancel(s, reservation_id=reservation_id, actor=actor)
            ),
        )

    @strawberry.mutation(
        description="Create an event, on sale at once; its creator is its organizer. "
        "Organizers only."
    )
    async def create_event(
        self,
        info: Info,
        input: Annotated[
            CreateEventInput, strawberry.argument(description="The new event's details.")
        ],
    ) -> CreateEventResult:
        organizer = info.context.require_organizer()
        draft = events.EventDraft(
            name=input.name,
            venue=input.venue,
            starts_at=input.starts_at,
            capacity=input.capacity,
            description=input.description,
            ends_at=input.ends_at,
            max_tickets_per_customer=input.max_tickets_per_customer,
        )
        return cast(
            CreateEventResult,
            await _change_event(
                info, lambda s: events.create_event(s, draft, owner_id=organizer.customer_id)
            ),
        )

    @strawberry.mutation(
        description="Change an event's details or capacity. Its organizer (or an admin) only: "
        "to other organizers it is NotFound, as a missing event is."
    )
    async def update_event(
        self,
        info: Info,
        input: Annotated[
            UpdateEventInput, strawberry.argument(description="The event and the fields to change.")
        ],
    ) -> UpdateEventResult:
        actor = info.context.require_organizer()
        event_id = key_of(input.event_id, "Event")
        if event_id is None:
            return not_found(input.event_id, "Event")
        changes = events.EventChanges(
            **_given(input, keep_on_null=("name", "venue", "starts_at", "capacity", "description"))
        )
        return cast(
            UpdateEventResult,
            await _change_event(info, lambda s: events.update_event(s, event_id, changes, actor)),
        )

    @strawberry.mutation(
        description="Cancel an event and every active reservation of it, releasing their "
        "tickets. Cancelling it again returns it unchanged. Its organizer (or an admin) only: "
        "to other organizers it is NotFound, as a missing event is."
    )
    async def cancel_event(
        self,
        info: Info,
        input: Annotated[CancelEventInput, strawberry.argument(description="The event to cancel.")],
    ) -> CancelEventResult:
        actor = info.context.require_organizer()
        event_id = key_of(input.event_id, "Event")
        if event_id is None:
            return not_found(input.event_id, "Event")
        return cast(
            CancelEventResult,
            await _change_event(info, lambda s: events.cancel_event(s, event_id, actor)),
        )


@dataclass(frozen=True)
class Idempotency:
    key: str
    fingerprint: str


def _idempotency(info: Info, given: str | None, *request: object) -> Idempotency | None:
    """The request's idempotency key (the input field's, else the header's), with a
    fingerprint of what the request asks for."""
    key = given if given is not None else info.context.idempotency_key
    if key is None:
        return None
    if not idempotency.is_valid_key(key):
        raise request_error(
            ErrorCode.BAD_USER_INPUT,
            f"An idempotency key must be 1 to {idempotency.MAX_KEY_LENGTH} printable ASCII "
            "characters.",
        )
    fingerprint = hashlib.sha256(json.dumps(request).encode()).hexdigest()
    return Idempotency(key, fingerprint)


async def _book(
    info: Info,
    work: Callable[[Session], booking.Booking],
    *,
    keyed: Idempotency | None = None,
    writes_one_statement: bool = False,
    event_id: int | None = None,
) -> ReservationPayload | Error:
    """`writes_one_statement`: the work is atomic without a transaction (see
    `booking.reserve`), unless a key must be claimed along with it. `event_id`: the event
    whose row the work locks, when known up front (a hot sale queues there)."""
    db = info.context.db
    run = db.run_autocommit if writes_one_statement and keyed is None else db.run
    if keyed is not None:
        work = _once(work, info.context.require_viewer(), keyed)
    try:
        done = await run(work, contends_for=None if event_id is None else ("event", event_id))
    except DomainError as refusal:
        return to_graphql(refusal)
    info.context.record_change(done.event)
    return ReservationPayload.from_booking(done)


def _once(
    work: Callable[[Session], booking.Booking], actor: booking.Actor, keyed: Idempotency
) -> Callable[[Session], booking.Booking]:
    return lambda session: idempotency.once(
        session, actor=actor, key=keyed.key, fingerprint=keyed.fingerprint, perform=work
    )


async def _change_event(
    info: Info, work: Callable[[Session], models.Event]
) -> EventPayload | Error:
    try:
        event = await info.context.db.run(work)
    except DomainError as refusal:
        return to_graphql(refusal)
    info.context.record_change(event)
    return EventPayload(event=Event.from_model(event))


def _given(update: UpdateEventInput, *, keep_on_null: tuple[str, ...]) -> dict[str, Any]:
    """The fields of an update input that change something."""
    changes = {}
    for name in events.EventChanges.__dataclass_fields__:
        value = getattr(update, name)
        if value is strawberry.UNSET or (value is None and name in keep_on_null):
            continue
        changes[name] = value
    return changes
