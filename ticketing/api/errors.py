"""The one place that turns domain errors into GraphQL errors.

Refusals of a mutation become typed members of its result union (all implementing `Error`);
problems with the request itself become top-level errors with an `extensions.code`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import strawberry
from graphql import GraphQLError
from strawberry.utils.str_converters import to_camel_case

from ticketing.api.ids import to_global_id
from ticketing.domain import errors as domain


class ErrorCode(StrEnum):
    """Values of `extensions.code` on top-level errors."""

    BAD_USER_INPUT = "BAD_USER_INPUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    QUERY_LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
    BAD_REQUEST = "BAD_REQUEST"
    PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
    # A subscription's target doesn't exist (or isn't the viewer's to see).
    NOT_FOUND = "NOT_FOUND"


def request_error(code: ErrorCode, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code.value})


@strawberry.interface(
    description="Why a mutation was refused. Every refusal leaves the data unchanged."
)
class Error:
    message: str = strawberry.field(description="A human-readable explanation, for display.")


@strawberry.type(
    description="No such object, or one the viewer may not see (the two are indistinguishable)."
)
class NotFound(Error):
    id: strawberry.ID = strawberry.field(description="The ID that was asked for.")


@strawberry.type(description="The quantity is outside the accepted range.")
class InvalidQuantity(Error):
    min: int = strawberry.field(description="The smallest accepted quantity.")
    max: int | None = strawberry.field(
        description="The largest accepted quantity here, when there is one."
    )


@strawberry.type(description="The event has fewer tickets available than were asked for.")
class NotEnoughTickets(Error):
    requested: int = strawberry.field(description="The number of tickets being added.")
    available: int = strawberry.field(description="The tickets available right now.")


@strawberry.type(
    description="The change would take the customer past the event's per-customer ticket limit."
)
class CustomerLimitReached(Error):
    limit: int = strawberry.field(
        description="The most tickets one customer may hold for the event."
    )
    held: int = strawberry.field(
        description="The tickets the customer already holds in HELD and ACTIVE reservations."
    )


@strawberry.type(description="The reservation is cancelled and can't be changed.")
class ReservationCancelled(Error):
    pass


@strawberry.type(
    description="The reservation's hold ran out before it was confirmed: its tickets went back "
    "(to the waitlist first, then on sale). Reserve again if tickets are available."
)
class HoldExpired(Error):
    expired_at: datetime = strawberry.field(description="When the hold ran out.")


@strawberry.type(
    description="Enough tickets are on sale right now: reserve them instead of joining the "
    "waitlist."
)
class TicketsAvailable(Error):
    available: int = strawberry.field(description="The tickets available right now.")


@strawberry.type(description="The event is cancelled: it takes no reservations and no changes.")
class EventCancelled(Error):
    pass


@strawberry.type(
    description="The event has started: its reservations can no longer be made or changed."
)
class EventStarted(Error):
    pass


@strawberry.type(description="The event input breaks a rule, for example an end before the start.")
class InvalidEvent(Error):
    field: str = strawberry.field(description="The input field at fault, as named in the schema.")


@strawberry.type(
    description="The idempotency key was already used by this customer for a different "
    "request (another operation or input). Nothing was changed."
)
class IdempotencyKeyReused(Error):
    pass


def to_graphql(error: domain.DomainError) -> Error:
    """The typed GraphQL error for a domain refusal."""
    match error:
        case domain.NotFound(kind=kind, key=key):
            return NotFound(message=error.message, id=to_global_id(kind, key))
        case domain.InvalidQuantity(min=low, max=high):
            return InvalidQuantity(message=error.message, min=low, max=high)
        case domain.NotEnoughTickets(requested=requested, available=available):
            return NotEnoughTickets(message=error.message, requested=requested, available=available)
        case domain.CustomerLimitReached(limit=limit, held=held):
            return CustomerLimitReached(message=error.message, limit=limit, held=held)
        case domain.ReservationCancelled():
            return ReservationCancelled(message=error.message)
        case domain.HoldExpired(expired_at=expired_at):
            return HoldExpired(message=error.message, expired_at=expired_at)
        case domain.TicketsAvailable(available=available):
            return TicketsAvailable(message=error.message, available=available)
        case domain.EventCancelled():
            return EventCancelled(message=error.message)
        case domain.EventStarted():
            return EventStarted(message=error.message)
        case domain.InvalidEvent(field=field):
            return InvalidEvent(message=error.message, field=to_camel_case(field))
        case domain.IdempotencyKeyReused():
            return IdempotencyKeyReused(message=error.message)
    raise TypeError(f"No GraphQL error type for {type(error).__name__}")


def not_found(global_id: str, type_name: str) -> NotFound:
    """For an ID that is malformed or names another type: as good as missing."""
    return NotFound(message=f"{type_name} not found.", id=strawberry.ID(global_id))
