"""GraphQL documents several test modules send."""

from __future__ import annotations


def create_reservation(selection: str) -> str:
    """`createReservation` with one `$input: CreateReservationInput!`, asking for `selection`."""
    return f"""mutation($input: CreateReservationInput!) {{
    createReservation(input: $input) {{ {selection} }} }}"""


# Whether it was made: `{"createReservation": {"__typename": "ReservationPayload"}}`.
RESERVE = create_reservation("__typename")
# And the new reservation's global ID.
RESERVE_ID = create_reservation("__typename ... on ReservationPayload { reservation { id } }")
