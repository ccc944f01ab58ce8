"""Event mutations, for organizers: create, change and cancel their events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeAlias, cast

import strawberry

from ticketing.api.context import Info
from ticketing.api.errors import (
    Error,
    EventCancelled,
    EventStarted,
    InvalidEvent,
    NotFound,
    not_found,
)
from ticketing.api.ids import key_of
from ticketing.api.mutations import attempt
from ticketing.api.types import Event
from ticketing.domain import events, models
from ticketing.domain.operation import Operation


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
    hold_minutes: int | None = strawberry.field(
        default=None,
        description="How long a new reservation holds its tickets (HELD) before it must be "
        "confirmed, 1 to 120 minutes; null (the default) makes reservations final at once.",
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
    hold_minutes: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="A new hold time, 1 to 120 minutes; null makes new reservations final at "
        "once. Applies to new holds only: existing holds keep their `expiresAt`.",
    )


@strawberry.input(description="Cancel an event and all its active reservations.")
class CancelEventInput:
    event_id: strawberry.ID = strawberry.field(description="The event's global ID.")


@strawberry.type(description="An event after a successful change.")
class EventPayload:
    event: Event = strawberry.field(description="The event as it is now.")


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


@strawberry.type
class EventMutations:
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
        draft = events.EventDraft(**{name: getattr(input, name) for name in events.EDITABLE_FIELDS})
        operation = events.create_event(draft, owner_id=organizer.customer_id)
        return cast(CreateEventResult, await _change_event(info, operation))

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
        operation = events.update_event(event_id, _changes(input), actor)
        return cast(UpdateEventResult, await _change_event(info, operation))

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
        operation = events.cancel_event(event_id, actor)
        return cast(CancelEventResult, await _change_event(info, operation))


async def _change_event(info: Info, operation: Operation[models.Event]) -> EventPayload | Error:
    return await attempt(
        info,
        operation,
        answer=lambda event: EventPayload(event=Event.from_model(event)),
        changed=lambda event: event,
    )


def _changes(update: UpdateEventInput) -> dict[str, Any]:
    """The fields of an update input that change something."""
    changes = {}
    for name in events.EDITABLE_FIELDS:
        value = getattr(update, name)
        if value is strawberry.UNSET or (value is None and name not in events.CLEARABLE_FIELDS):
            continue
        changes[name] = value
    return changes
