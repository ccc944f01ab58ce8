"""The GraphQL mutations the test modules send, written out once: each with one `$input` of
its input type, or with its input made from plain variables (`$eventId`, the reservation's
`$id`, `$n` tickets), asking for the selection given."""

from __future__ import annotations


def mutation(field: str, selection: str, *, operation: str = "") -> str:
    """The mutation `field` with one `$input` of its input type (`createReservation` takes a
    `CreateReservationInput!`), asking for `selection`; `operation`: the operation's name."""
    input_type = f"{field[0].upper()}{field[1:]}Input"
    return f"""mutation{f" {operation}" if operation else ""}($input: {input_type}!) {{
    {field}(input: $input) {{ {selection} }} }}"""


def create_reservation(selection: str, *, operation: str = "") -> str:
    """`createReservation` with one `$input: CreateReservationInput!`, asking for `selection`."""
    return mutation("createReservation", selection, operation=operation)


def reserve_tickets(selection: str) -> str:
    """`createReservation` of `$n` tickets of the event `$eventId`, asking for `selection`."""
    return f"""mutation($eventId: ID!, $n: Int!) {{
    createReservation(input: {{eventId: $eventId, quantity: $n}}) {{ {selection} }} }}"""


def change_tickets(operation: str, selection: str) -> str:
    """`updateReservation` of the reservation `$id` by `$n` tickets (`operation`: INCREASE or
    DECREASE), asking for `selection`."""
    return f"""mutation($id: ID!, $n: Int!) {{ updateReservation(
    input: {{reservationId: $id, operation: {operation}, quantity: $n}}) {{ {selection} }} }}"""


def on_reservation(field: str, selection: str) -> str:
    """`field` (`cancelReservation`, `confirmReservation`) of the reservation `$id`, asking for
    `selection`."""
    return f"""mutation($id: ID!) {{ {field}(input: {{reservationId: $id}}) {{ {selection} }} }}"""


def cancel_event(selection: str) -> str:
    """`cancelEvent` of the event `$id`, asking for `selection`."""
    return f"""mutation($id: ID!) {{ cancelEvent(input: {{eventId: $id}}) {{ {selection} }} }}"""


# A page of events, as `events(first:, after:, filter:, orderBy:)` gives them.
EVENTS = """query($first: Int, $after: String, $filter: EventFilter, $orderBy: EventOrder) {
    events(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
        totalCount
        edges { cursor node { id name venue ticketsAvailable status } }
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
}"""
# An event made or changed, or why not.
CREATE_EVENT = mutation(
    "createEvent",
    """__typename ... on EventPayload { event { id name venue capacity ticketsAvailable
        maxTicketsPerCustomer startsAt endsAt status } }
    ... on InvalidEvent { field message }""",
)
UPDATE_EVENT = mutation(
    "updateEvent",
    """__typename ... on EventPayload { event { id name capacity ticketsAvailable
        maxTicketsPerCustomer startsAt endsAt } }
    ... on InvalidEvent { field message } ... on Error { message }""",
)
# Whether it was made: `{"createReservation": {"__typename": "ReservationPayload"}}`.
RESERVE = create_reservation("__typename")
# And the new reservation's global ID.
RESERVE_ID = create_reservation("__typename ... on ReservationPayload { reservation { id } }")
# The same, of `$n` tickets of the event `$eventId`.
RESERVE_TICKETS = reserve_tickets("__typename ... on ReservationPayload { reservation { id } }")
# Cancelling the event `$id`: `{"cancelEvent": {"__typename": "EventPayload"}}` when done.
CANCEL_EVENT = cancel_event("__typename")
