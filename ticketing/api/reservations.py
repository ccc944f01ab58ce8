"""Reservation mutations: create, change the number of tickets, cancel."""

from __future__ import annotations

import enum
from typing import Annotated, TypeAlias, cast

import strawberry

from ticketing.api.context import Info
from ticketing.api.errors import (
    CustomerLimitReached,
    Error,
    EventCancelled,
    EventStarted,
    HoldExpired,
    IdempotencyKeyReused,
    InvalidQuantity,
    NotEnoughTickets,
    NotFound,
    ReservationCancelled,
    not_found,
)
from ticketing.api.ids import key_of
from ticketing.api.mutations import IDEMPOTENCY_KEY_DESCRIPTION, at_most_once, attempt
from ticketing.api.types import Event, Reservation
from ticketing.domain import booking
from ticketing.domain.inventory import Booking
from ticketing.domain.operation import Operation


@strawberry.enum(description="How `updateReservation` changes the number of tickets.")
class ReservationOperation(enum.Enum):
    INCREASE = strawberry.enum_value(
        "INCREASE", description="Add `quantity` tickets to the reservation."
    )
    DECREASE = strawberry.enum_value(
        "DECREASE",
        description="Give back `quantity` tickets; at least one must remain (cancel instead).",
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


@strawberry.input(description="Confirm a HELD reservation, making it final.")
class ConfirmReservationInput:
    reservation_id: strawberry.ID = strawberry.field(description="The reservation's global ID.")
    idempotency_key: str | None = strawberry.field(
        default=None, description=IDEMPOTENCY_KEY_DESCRIPTION
    )


@strawberry.input(description="Cancel a reservation, releasing its tickets.")
class CancelReservationInput:
    reservation_id: strawberry.ID = strawberry.field(description="The reservation's global ID.")


@strawberry.type(description="A reservation after a successful change.")
class ReservationPayload:
    reservation: Reservation = strawberry.field(description="The reservation as it is now.")
    event: Event = strawberry.field(description="Its event, showing the new availability.")

    @classmethod
    def from_booking(cls, done: Booking) -> ReservationPayload:
        return cls(
            reservation=Reservation.from_model(done.reservation, done.event),
            event=Event.from_model(done.event),
        )


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
    | HoldExpired
    | EventCancelled
    | EventStarted
    | IdempotencyKeyReused,
    strawberry.union(
        "UpdateReservationResult", description="The changed reservation, or why it was refused."
    ),
]
ConfirmReservationResult: TypeAlias = Annotated[
    ReservationPayload
    | NotFound
    | HoldExpired
    | ReservationCancelled
    | EventCancelled
    | EventStarted
    | IdempotencyKeyReused,
    strawberry.union(
        "ConfirmReservationResult",
        description="The confirmed reservation, or why it can't be confirmed.",
    ),
]
CancelReservationResult: TypeAlias = Annotated[
    ReservationPayload | NotFound | EventStarted | HoldExpired,
    strawberry.union(
        "CancelReservationResult",
        description="The cancelled reservation, or why it can't be cancelled.",
    ),
]


@strawberry.type
class ReservationMutations:
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
        operation = booking.reserve(event_id=event_id, actor=actor, quantity=input.quantity)
        keyed = at_most_once(
            info,
            operation,
            input.idempotency_key,
            "createReservation",
            input.event_id,
            input.quantity,
        )
        return cast(CreateReservationResult, await _book(info, keyed, "create"))

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
        change = (
            booking.increase
            if input.operation is ReservationOperation.INCREASE
            else booking.decrease
        )
        operation = change(reservation_id=reservation_id, actor=actor, quantity=input.quantity)
        keyed = at_most_once(
            info,
            operation,
            input.idempotency_key,
            "updateReservation",
            input.reservation_id,
            input.operation.name,
            input.quantity,
        )
        kind = "increase" if input.operation is ReservationOperation.INCREASE else "decrease"
        return cast(UpdateReservationResult, await _book(info, keyed, kind))

    @strawberry.mutation(
        description="Confirm a HELD reservation (after payment), making it final (ACTIVE) "
        "before its hold runs out. Its customer may, and a token with the `checkout` role (a "
        "payment backend). Confirming an ACTIVE reservation returns it unchanged."
    )
    async def confirm_reservation(
        self,
        info: Info,
        input: Annotated[
            ConfirmReservationInput, strawberry.argument(description="The reservation to confirm.")
        ],
    ) -> ConfirmReservationResult:
        actor = info.context.require_viewer()
        reservation_id = key_of(input.reservation_id, "Reservation")
        if reservation_id is None:
            return not_found(input.reservation_id, "Reservation")
        operation = at_most_once(
            info,
            booking.confirm(reservation_id=reservation_id, actor=actor),
            input.idempotency_key,
            "confirmReservation",
            input.reservation_id,
        )
        return cast(ConfirmReservationResult, await _book(info, operation, "confirm"))

    @strawberry.mutation(
        description="Cancel a reservation (HELD or ACTIVE), releasing its tickets. Cancelling a "
        "cancelled reservation returns it unchanged, so retries are safe; an expired one is "
        "HoldExpired. An event's organizer may cancel any of its reservations."
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
        operation = booking.cancel(reservation_id=reservation_id, actor=actor)
        return cast(CancelReservationResult, await _book(info, operation, "cancel"))


async def _book(info: Info, operation: Operation[Booking], kind: str) -> ReservationPayload | Error:
    """`kind`: what the reservation change counts as in the metrics."""
    return await attempt(
        info,
        operation,
        answer=ReservationPayload.from_booking,
        changed=lambda done: done.event,
        counts_as=kind,
    )
