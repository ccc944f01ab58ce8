"""Events belong to the organizer who created them: only they (and admins) manage an event,
see its reservations and cancel them. To other organizers it looks like a missing event, and
a customer's history names who acted by role only."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import (
    RESERVE_TICKETS,
    cancel_event,
    create_reservation,
    mutation,
    on_reservation,
)
from tests.helpers import (
    ORGANIZER,
    auth,
    data,
    history,
    in_days,
    insert_event,
    new_event,
    snapshot,
)
from ticketing.api.ids import key_of, to_global_id

OTHER_ORGANIZER = auth("oscar", organizer=True)
ADMIN = auth("ada", admin=True)
MISSING_EVENT = to_global_id("Event", 999_999)

EVENT_RESERVATIONS = """query($id: ID!) { event(id: $id) {
    name reservations { totalCount edges { node { customer quantity } } } } }"""
RESERVATION = """query($id: ID!) { reservation(id: $id) { customer }
    node(id: $id) { ... on Reservation { customer } } }"""
HISTORY = "query($id: ID!) { reservation(id: $id) { history { edges { node { kind actor } } } } }"
CREATE_EVENT = mutation("createEvent", "__typename ... on EventPayload { event { id } }")
UPDATE_EVENT = """mutation($id: ID!) { updateEvent(input: {eventId: $id, capacity: 3, name: "Mine"})
    { __typename ... on Error { message } ... on NotFound { id }
      ... on EventPayload { event { name capacity } } } }"""
CANCEL_EVENT = cancel_event(
    """__typename ... on Error { message } ... on NotFound { id }
    ... on EventPayload { event { status } }"""
)
CANCEL_RESERVATION = on_reservation(
    "cancelReservation",
    """__typename ... on Error { message } ... on NotFound { id }
    ... on ReservationPayload { reservation { status } }""",
)


def event_with_a_reservation(client: TestClient, engine: Engine) -> tuple[str, str]:
    """An event of olivia's (see `insert_event`), and alice's reservation of it."""
    event_id = insert_event(engine, capacity=10)
    return event_id, reserve(client, event_id, auth("alice"))["reservation"]["id"]


def reserve(client: TestClient, event_id: str, headers: dict[str, str]) -> Any:
    """Two tickets of the event."""
    variables = {"eventId": event_id, "n": 2}
    return data(client, RESERVE_TICKETS, variables, headers=headers)["createReservation"]


def answer(client: TestClient, query: str, id: str, headers: dict[str, str]) -> Any:
    [result] = data(client, query, {"id": id}, headers=headers).values()
    return result


def as_if_missing(result: Any, asked: str, missing: str) -> Any:
    """The answer with the ID asked about replaced: to compare it with a missing one's."""
    return {**result, "id": missing} if result.get("id") == asked else result


def test_another_organizer_sees_no_reservation_list(client: TestClient, engine: Engine) -> None:
    event_id, _ = event_with_a_reservation(client, engine)
    for outsider in (OTHER_ORGANIZER, auth("alice"), {}):
        assert answer(client, EVENT_RESERVATIONS, event_id, outsider) == {
            "name": "Concert",
            "reservations": None,
        }
    for manager in (ORGANIZER, ADMIN):
        listed = answer(client, EVENT_RESERVATIONS, event_id, manager)["reservations"]
        assert listed == {
            "totalCount": 1,
            "edges": [{"node": {"customer": "alice", "quantity": 2}}],
        }


def test_another_organizer_cannot_change_or_cancel_the_event(
    client: TestClient, engine: Engine
) -> None:
    event_id, _ = event_with_a_reservation(client, engine)
    before = snapshot(engine)
    for document in (UPDATE_EVENT, CANCEL_EVENT):
        refused = answer(client, document, event_id, OTHER_ORGANIZER)
        missing = answer(client, document, MISSING_EVENT, OTHER_ORGANIZER)
        assert refused["__typename"] == "NotFound"
        # Word for word what a missing event gets: the ID tells nothing.
        assert as_if_missing(refused, event_id, MISSING_EVENT) == missing
    assert snapshot(engine) == before
    # The control: the very same requests by its organizer go through.
    assert answer(client, UPDATE_EVENT, event_id, ORGANIZER)["event"] == {
        "name": "Mine",
        "capacity": 3,
    }
    assert answer(client, CANCEL_EVENT, event_id, ORGANIZER)["event"] == {"status": "CANCELLED"}


def test_another_organizer_can_neither_see_nor_cancel_a_reservation_of_it(
    client: TestClient, engine: Engine
) -> None:
    _, reservation_id = event_with_a_reservation(client, engine)
    before = snapshot(engine)
    assert data(client, RESERVATION, {"id": reservation_id}, headers=OTHER_ORGANIZER) == {
        "reservation": None,
        "node": None,
    }
    refused = answer(client, CANCEL_RESERVATION, reservation_id, OTHER_ORGANIZER)
    assert refused == {
        "__typename": "NotFound",
        "message": "Reservation not found.",
        "id": reservation_id,
    }
    assert snapshot(engine) == before
    for allowed in (auth("alice"), ORGANIZER, ADMIN):
        assert data(client, RESERVATION, {"id": reservation_id}, headers=allowed) == {
            "reservation": {"customer": "alice"},
            "node": {"customer": "alice"},
        }
    cancelled = answer(client, CANCEL_RESERVATION, reservation_id, ORGANIZER)
    assert cancelled == {"__typename": "ReservationPayload", "reservation": {"status": "CANCELLED"}}


def test_an_event_belongs_to_the_organizer_who_created_it(
    client: TestClient, engine: Engine
) -> None:
    created = data(client, CREATE_EVENT, {"input": new_event()}, headers=OTHER_ORGANIZER)
    event_id = created["createEvent"]["event"]["id"]
    with engine.connect() as connection:
        owner = connection.scalar(
            sa.text("SELECT owner_id FROM event WHERE id = :id"), {"id": key_of(event_id, "Event")}
        )
    assert owner == "oscar"
    # Olivia, an organizer too, now is the outsider.
    assert answer(client, UPDATE_EVENT, event_id, ORGANIZER)["__typename"] == "NotFound"
    assert answer(client, UPDATE_EVENT, event_id, OTHER_ORGANIZER)["__typename"] == "EventPayload"


def test_an_admin_manages_every_event(client: TestClient, engine: Engine) -> None:
    event_id, reservation_id = event_with_a_reservation(client, engine)
    other_id, other_reservation = event_with_a_reservation(client, engine)
    assert answer(client, UPDATE_EVENT, event_id, ADMIN)["event"] == {"name": "Mine", "capacity": 3}
    assert answer(client, CANCEL_RESERVATION, reservation_id, ADMIN)["reservation"] == {
        "status": "CANCELLED"
    }
    assert answer(client, CANCEL_EVENT, other_id, ADMIN)["event"] == {"status": "CANCELLED"}
    # An admin may create events too; they are the admin's, not any organizer's.
    made = data(client, CREATE_EVENT, {"input": new_event(startsAt=in_days(3))}, headers=ADMIN)
    admins_event = made["createEvent"]["event"]["id"]
    assert answer(client, CANCEL_EVENT, admins_event, ORGANIZER)["__typename"] == "NotFound"
    assert history(answer(client, HISTORY, other_reservation, auth("alice"))) == [
        {"kind": "CREATED", "actor": "CUSTOMER"},
        {"kind": "CANCELLED", "actor": "ADMIN"},
    ]


def test_history_names_roles_never_subjects(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    reservations = [reserve(client, event_id, auth("alice"))["reservation"]["id"] for _ in range(3)]
    for reservation_id, who in zip(reservations, (auth("alice"), ORGANIZER, ADMIN), strict=True):
        answer(client, CANCEL_RESERVATION, reservation_id, who)
    seen = [
        client.post(
            "/graphql",
            json={"query": HISTORY, "variables": {"id": reservation_id}},
            headers=auth("alice"),
        )
        for reservation_id in reservations
    ]
    assert [history(response.json()["data"]["reservation"])[-1] for response in seen] == [
        {"kind": "CANCELLED", "actor": "CUSTOMER"},
        {"kind": "CANCELLED", "actor": "ORGANIZER"},
        {"kind": "CANCELLED", "actor": "ADMIN"},
    ]
    for response in seen:
        assert "olivia" not in response.text
        assert "ada" not in response.text
    # The subjects stay in the database, for audit.
    with engine.connect() as connection:
        actors = connection.scalars(
            sa.text("SELECT actor FROM reservation_change WHERE kind = 'CANCELLED' ORDER BY id")
        ).all()
    assert actors == ["alice", "olivia", "ada"]


def test_cancelling_an_event_records_its_organizer_by_role(
    client: TestClient, engine: Engine
) -> None:
    event_id, reservation_id = event_with_a_reservation(client, engine)
    answer(client, CANCEL_EVENT, event_id, ORGANIZER)
    assert history(answer(client, HISTORY, reservation_id, auth("alice"))) == [
        {"kind": "CREATED", "actor": "CUSTOMER"},
        {"kind": "CANCELLED", "actor": "ORGANIZER"},
    ]


def test_a_replayed_answer_shows_the_event_as_managed_now(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    reserve(client, event_id, auth("alice"))
    keyed = {"input": {"eventId": event_id, "quantity": 1, "idempotencyKey": "olivia-buys-one"}}
    reservations = create_reservation(
        "... on ReservationPayload { event { reservations { totalCount } } }"
    )

    def reserve_keyed() -> Any:
        return data(client, reservations, keyed, headers=ORGANIZER)["createReservation"]

    first = reserve_keyed()  # olivia reserves at her own event
    assert first["event"]["reservations"]["totalCount"] == 2
    with engine.begin() as connection:  # then hands the event to oscar
        connection.execute(
            sa.text("UPDATE event SET owner_id = 'oscar' WHERE id = :id"),
            {"id": key_of(event_id, "Event")},
        )
    assert reserve_keyed()["event"]["reservations"] is None
