"""Browsing events and running them as an organizer."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import (
    CREATE_EVENT,
    EVENTS,
    RESERVE_TICKETS,
    UPDATE_EVENT,
    cancel_event,
    change_tickets,
    on_reservation,
)
from tests.helpers import (
    ORGANIZER,
    auth,
    data,
    gql,
    history,
    in_days,
    insert_event,
    invariant_violations,
    new_event,
    snapshot,
    start_event_now,
)

EVENT_FIELDS = """id name description venue startsAt endsAt capacity ticketsAvailable
    maxTicketsPerCustomer status createdAt updatedAt"""


def events(client: TestClient, **variables: Any) -> Any:
    return data(client, EVENTS, variables)["events"]


def names(connection: Any) -> list[str]:
    return [edge["node"]["name"] for edge in connection["edges"]]


def test_default_listing_hides_started_events_soonest_first(
    client: TestClient, engine: Engine
) -> None:
    insert_event(engine, name="Later", starts_in=timedelta(days=9))
    insert_event(engine, name="Sooner", starts_in=timedelta(days=2))
    insert_event(engine, name="Past", starts_in=timedelta(days=-1))
    listed = events(client)
    assert names(listed) == ["Sooner", "Later"]
    assert listed["totalCount"] == 2
    assert listed["pageInfo"]["hasNextPage"] is False
    assert listed["pageInfo"]["hasPreviousPage"] is False
    past = events(client, filter={"startsAfter": in_days(-30)})
    assert names(past) == ["Past", "Sooner", "Later"]


def test_orders_and_filters(client: TestClient, engine: Engine) -> None:
    insert_event(engine, name="Bravo", venue="Arena", starts_in=timedelta(days=1))
    insert_event(engine, name="alpha jazz", venue="Club", starts_in=timedelta(days=3))
    insert_event(
        engine,
        name="Charlie",
        venue="Jazz Cellar",
        starts_in=timedelta(days=2),
        capacity=5,
        tickets_available=0,
    )
    insert_event(engine, name="Delta", status="CANCELLED", starts_in=timedelta(days=4))
    assert names(events(client, orderBy="STARTS_AT_DESC")) == [
        "Delta",
        "alpha jazz",
        "Charlie",
        "Bravo",
    ]
    assert names(events(client, orderBy="NAME_ASC")) == ["Bravo", "Charlie", "Delta", "alpha jazz"]
    assert names(events(client, filter={"search": "JAZZ"})) == ["Charlie", "alpha jazz"]
    assert names(events(client, filter={"search": "%"})) == []
    assert names(events(client, filter={"availableOnly": True})) == ["Bravo", "alpha jazz"]
    window = {"startsAfter": in_days(1.5), "startsBefore": in_days(3.5)}
    assert names(events(client, filter=window)) == ["Charlie", "alpha jazz"]


@pytest.mark.parametrize("order", ["STARTS_AT_ASC", "STARTS_AT_DESC", "NAME_ASC"])
def test_keyset_pages_are_stable_when_rows_are_inserted_before(
    client: TestClient, engine: Engine, order: str
) -> None:
    for day in range(1, 8):
        insert_event(engine, name=f"Event {day}", starts_in=timedelta(days=day))
    first_page = events(client, first=3, orderBy=order)
    assert first_page["pageInfo"]["hasNextPage"] is True
    # New rows that sort before the cursor must not shift the next page.
    insert_event(engine, name="Event 0", starts_in=timedelta(hours=1))
    insert_event(engine, name="Event 8", starts_in=timedelta(days=8))
    rest: list[str] = []
    after = first_page["pageInfo"]["endCursor"]
    while after:
        page = events(client, first=3, after=after, orderBy=order)
        assert page["pageInfo"]["hasPreviousPage"] is True
        rest += names(page)
        after = page["pageInfo"]["endCursor"] if page["pageInfo"]["hasNextPage"] else None
    everything = names(events(client, first=100, orderBy=order))
    seen = names(first_page) + rest
    assert len(seen) == len(set(seen))
    cut = everything.index(names(first_page)[-1]) + 1
    assert rest == everything[cut:]


@pytest.mark.parametrize("first", [0, -1, 101, 100000])
def test_page_size_out_of_range_is_bad_user_input(client: TestClient, first: int) -> None:
    body = gql(client, EVENTS, {"first": first})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "between 1 and 100" in body["errors"][0]["message"]


@pytest.mark.parametrize("cursor", ["junk", "", "WzFd", "WyJOQU1FX0FTQyIsIngiXQ"])
def test_foreign_cursors_are_bad_user_input(
    client: TestClient, engine: Engine, cursor: str
) -> None:
    insert_event(engine)
    body = gql(client, EVENTS, {"after": cursor})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_cursor_of_one_order_is_refused_by_another(client: TestClient, engine: Engine) -> None:
    insert_event(engine)
    cursor = events(client, orderBy="NAME_ASC")["pageInfo"]["endCursor"]
    body = gql(client, EVENTS, {"after": cursor, "orderBy": "STARTS_AT_ASC"})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_event_and_node_by_id(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, name="Gala", capacity=7, max_tickets_per_customer=2)
    query = f"""query($id: ID!) {{ event(id: $id) {{ {EVENT_FIELDS} }}
        node(id: $id) {{ __typename id ... on Event {{ name }} }} }}"""
    found = data(client, query, {"id": event_id})
    assert found["event"]["name"] == "Gala"
    assert found["event"]["capacity"] == 7
    assert found["event"]["maxTicketsPerCustomer"] == 2
    assert found["event"]["status"] == "ON_SALE"
    assert datetime.fromisoformat(found["event"]["startsAt"]).tzinfo is not None
    assert found["node"] == {"__typename": "Event", "id": event_id, "name": "Gala"}


@pytest.mark.parametrize(
    "bad_id", ["", "nope", "RXZlbnQ6OTk5OTk", "UmVzZXJ2YXRpb246MQ", "RXZlbnQ6MDE", "VGhpbmc6MQ"]
)
def test_missing_malformed_and_wrong_type_ids_give_null(
    client: TestClient, engine: Engine, bad_id: str
) -> None:
    insert_event(engine)
    query = "query($id: ID!) { event(id: $id) { id } reservation(id: $id) { id } }"
    assert data(client, query, {"id": bad_id}, headers=auth()) == {
        "event": None,
        "reservation": None,
    }


def test_my_reservations_lists_only_mine_newest_first(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=20)
    mine = [
        data(client, RESERVE_TICKETS, {"eventId": event_id, "n": n}, headers=auth())[
            "createReservation"
        ]["reservation"]["id"]
        for n in (1, 2, 3)
    ]
    data(client, RESERVE_TICKETS, {"eventId": event_id, "n": 1}, headers=auth("bob"))
    query = """query($status: ReservationStatus, $after: String) {
        myReservations(first: 2, status: $status, after: $after) {
            totalCount edges { node { id quantity event { id name } } }
            pageInfo { hasNextPage endCursor } } }"""
    page = data(client, query, headers=auth())["myReservations"]
    assert page["totalCount"] == 3
    assert [edge["node"]["id"] for edge in page["edges"]] == [mine[2], mine[1]]
    assert page["edges"][0]["node"]["event"]["id"] == event_id
    rest = data(client, query, {"after": page["pageInfo"]["endCursor"]}, headers=auth())
    assert [e["node"]["id"] for e in rest["myReservations"]["edges"]] == [mine[0]]
    assert (
        data(client, query, {"status": "CANCELLED"}, headers=auth())["myReservations"]["totalCount"]
        == 0
    )


def test_event_reservations_are_for_its_organizer(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=20)
    for who in ("alice", "bob"):
        data(client, RESERVE_TICKETS, {"eventId": event_id, "n": 2}, headers=auth(who))
    query = """query($id: ID!) { event(id: $id) { name
        reservations(first: 10) { totalCount edges { node { customer quantity } } } } }"""
    seen = data(client, query, {"id": event_id}, headers=ORGANIZER)["event"]["reservations"]
    assert seen["totalCount"] == 2
    assert sorted(edge["node"]["customer"] for edge in seen["edges"]) == ["alice", "bob"]
    # A customer (even one with reservations of it) and anonymous see the event, not its list.
    for headers in (auth(), {}):
        denied = data(client, query, {"id": event_id}, headers=headers)["event"]
        assert denied == {"name": "Concert", "reservations": None}


CANCEL_EVENT = cancel_event(
    "__typename ... on EventPayload { event { status ticketsAvailable } } ... on Error { message }"
)


def test_organizer_creates_an_event(client: TestClient, engine: Engine) -> None:
    created = data(
        client,
        CREATE_EVENT,
        {"input": new_event(endsAt=in_days(10.2), maxTicketsPerCustomer=4)},
        headers=ORGANIZER,
    )["createEvent"]
    assert created["__typename"] == "EventPayload"
    assert created["event"]["ticketsAvailable"] == 100
    assert created["event"]["status"] == "ON_SALE"
    assert created["event"]["maxTicketsPerCustomer"] == 4
    assert names(events(client)) == ["Launch"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "  "}, "name"),
        ({"venue": ""}, "venue"),
        ({"name": "x" * 201}, "name"),
        ({"startsAt": "2001-01-01T00:00:00+00:00"}, "startsAt"),
        ({"endsAt": "2001-01-01T00:00:00+00:00"}, "endsAt"),
        ({"capacity": -1}, "capacity"),
        ({"maxTicketsPerCustomer": 0}, "maxTicketsPerCustomer"),
        ({"startsAt": "2099-01-01T00:00:00"}, "startsAt"),
    ],
)
def test_invalid_event_input(
    client: TestClient, engine: Engine, overrides: dict[str, Any], field: str
) -> None:
    before = snapshot(engine)
    refused = data(client, CREATE_EVENT, {"input": new_event(**overrides)}, headers=ORGANIZER)[
        "createEvent"
    ]
    assert refused["__typename"] == "InvalidEvent"
    assert refused["field"] == field
    assert snapshot(engine) == before


# Characters that could break a log line or a terminal, or make text read differently from
# how it is stored.
LINE_AND_TERMINAL_CONTROLS = {
    "newline": "\n",
    "carriage-return": "\r",
    "tab": "\t",
    "ansi-escape": "\x1b[31m",
    "delete": "\x7f",
    "c1-next-line": "\x85",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
}
BIDI_CONTROLS = {
    "right-to-left-override": "\u202e",
    "left-to-right-embedding": "\u202a",
    "pop-directional-formatting": "\u202c",
    "right-to-left-isolate": "\u2067",
    "pop-directional-isolate": "\u2069",
}
REFUSED_TEXT = [
    *(
        pytest.param(field, f"Gala{text}Night", id=f"{field}-{name}")
        for field in ("name", "venue")
        for name, text in {**LINE_AND_TERMINAL_CONTROLS, **BIDI_CONTROLS}.items()
    ),
    *(
        pytest.param("description", f"Doors open{text}at eight", id=f"description-{name}")
        for name, text in {**LINE_AND_TERMINAL_CONTROLS, **BIDI_CONTROLS}.items()
        if text not in ("\n", "\t")
    ),
]


@pytest.mark.parametrize(("field", "text"), REFUSED_TEXT)
def test_control_characters_in_event_text_are_invalid_event(
    client: TestClient, engine: Engine, field: str, text: str
) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    created = data(client, CREATE_EVENT, {"input": new_event(**{field: text})}, headers=ORGANIZER)
    updated = data(
        client, UPDATE_EVENT, {"input": {"eventId": event_id, field: text}}, headers=ORGANIZER
    )
    for refused in (created["createEvent"], updated["updateEvent"]):
        assert (refused["__typename"], refused["field"]) == ("InvalidEvent", field)
        assert "U+" in refused["message"]
    assert snapshot(engine) == before


def test_event_text_keeps_what_real_text_needs(client: TestClient, engine: Engine) -> None:
    """Newlines and tabs in a description; in every field, the bidi marks and joiners that
    mixed-direction text and emoji sequences need."""
    texts = {
        "name": "Fado \u200fليلة\u200f night \U0001f469\u200d\U0001f3a4",
        "venue": "Café \u05d1\u05d9\u05ea\u200e 5",
        "description": "Doors open at eight.\n\n\tBring a friend.",
    }
    created = data(client, CREATE_EVENT, {"input": new_event(**texts)}, headers=ORGANIZER)
    event_id = created["createEvent"]["event"]["id"]
    query = "query($id: ID!) { event(id: $id) { name venue description } }"
    assert data(client, query, {"id": event_id})["event"] == texts
    updated = data(
        client,
        UPDATE_EVENT,
        {"input": {"eventId": event_id, "description": "Sold out.\nSee you there."}},
        headers=ORGANIZER,
    )
    assert updated["updateEvent"]["__typename"] == "EventPayload"


def test_update_event_moves_availability_with_capacity(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10, max_tickets_per_customer=5)
    data(client, RESERVE_TICKETS, {"eventId": event_id, "n": 4}, headers=auth())
    updated = data(
        client,
        UPDATE_EVENT,
        {
            "input": {
                "eventId": event_id,
                "capacity": 6,
                "name": "Renamed",
                "maxTicketsPerCustomer": None,
            }
        },
        headers=ORGANIZER,
    )["updateEvent"]
    assert updated["event"]["capacity"] == 6
    assert updated["event"]["ticketsAvailable"] == 2
    assert updated["event"]["name"] == "Renamed"
    assert updated["event"]["maxTicketsPerCustomer"] is None
    before = snapshot(engine)
    refused = data(
        client, UPDATE_EVENT, {"input": {"eventId": event_id, "capacity": 3}}, headers=ORGANIZER
    )["updateEvent"]
    assert refused["__typename"] == "InvalidEvent"
    assert refused["field"] == "capacity"
    assert "4" in refused["message"]
    refused = data(
        client,
        UPDATE_EVENT,
        {"input": {"eventId": event_id, "endsAt": "2001-01-01T00:00:00Z"}},
        headers=ORGANIZER,
    )["updateEvent"]
    assert refused["field"] == "endsAt"
    assert snapshot(engine) == before
    assert invariant_violations(engine) == []


def test_update_event_refusals(client: TestClient, engine: Engine) -> None:
    cancelled = insert_event(engine, status="CANCELLED")
    before = snapshot(engine)
    assert (
        data(
            client, UPDATE_EVENT, {"input": {"eventId": cancelled, "name": "x"}}, headers=ORGANIZER
        )["updateEvent"]["__typename"]
        == "EventCancelled"
    )
    assert (
        data(client, UPDATE_EVENT, {"input": {"eventId": "bogus", "name": "x"}}, headers=ORGANIZER)[
            "updateEvent"
        ]["__typename"]
        == "NotFound"
    )
    assert snapshot(engine) == before


def test_cancel_event_cancels_its_reservations(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    other_event = insert_event(engine, capacity=10)
    for who in ("alice", "bob"):
        data(client, RESERVE_TICKETS, {"eventId": event_id, "n": 3}, headers=auth(who))
    data(client, RESERVE_TICKETS, {"eventId": other_event, "n": 2}, headers=auth())
    result = data(client, CANCEL_EVENT, {"id": event_id}, headers=ORGANIZER)["cancelEvent"]
    assert result["event"] == {"status": "CANCELLED", "ticketsAvailable": 10}
    query = """{ myReservations { edges { node { status event { name }
        history { edges { node { kind quantity actor } } } } } } }"""
    edges = data(client, query, headers=auth())["myReservations"]["edges"]
    statuses = sorted(edge["node"]["status"] for edge in edges)
    assert statuses == ["ACTIVE", "CANCELLED"]
    cancelled = next(e["node"] for e in edges if e["node"]["status"] == "CANCELLED")
    assert history(cancelled)[-1] == {"kind": "CANCELLED", "quantity": 3, "actor": "ORGANIZER"}
    assert invariant_violations(engine) == []
    before = snapshot(engine)
    again = data(client, CANCEL_EVENT, {"id": event_id}, headers=ORGANIZER)["cancelEvent"]
    assert again["event"]["status"] == "CANCELLED"
    # Its reservations say why they can't change, and cancelling them again is a no-op.
    reservation_id = data(
        client, "{ myReservations(status: CANCELLED) { edges { node { id } } } }", headers=auth()
    )["myReservations"]["edges"][0]["node"]["id"]
    update = change_tickets("INCREASE", "__typename")
    assert data(client, update, {"id": reservation_id, "n": 1}, headers=auth())[
        "updateReservation"
    ] == {"__typename": "EventCancelled"}
    cancel = on_reservation(
        "cancelReservation", "__typename ... on ReservationPayload { reservation { status } }"
    )
    assert data(client, cancel, {"id": reservation_id}, headers=auth())["cancelReservation"][
        "reservation"
    ] == {"status": "CANCELLED"}
    assert snapshot(engine) == before


def test_started_event_cannot_be_cancelled(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    start_event_now(engine, event_id)
    before = snapshot(engine)
    result = data(client, CANCEL_EVENT, {"id": event_id}, headers=ORGANIZER)["cancelEvent"]
    assert result["__typename"] == "EventStarted"
    assert snapshot(engine) == before


def test_text_stored_before_a_rule_tightened_does_not_block_other_changes(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE event SET description = 'Doors\r\nopen at 7'"))
    changed = data(
        client, UPDATE_EVENT, {"input": {"eventId": event_id, "capacity": 12}}, headers=ORGANIZER
    )["updateEvent"]
    assert changed["__typename"] == "EventPayload"
    refused = data(
        client,
        UPDATE_EVENT,
        {"input": {"eventId": event_id, "description": "Doors\r\nopen at 8"}},
        headers=ORGANIZER,
    )["updateEvent"]
    assert refused["__typename"] == "InvalidEvent"
