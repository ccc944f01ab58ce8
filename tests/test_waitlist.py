"""The waitlist over GraphQL: joining, leaving, and offers made in the order of joining."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import create_reservation, mutation
from tests.helpers import (
    ORGANIZER,
    DatabaseClock,
    auth,
    data,
    history,
    insert_event,
    invariant_violations,
    snapshot,
    start_event_now,
)

ENTRY = """
    entry { id customer quantity status position createdAt
            reservation { id status quantity expiresAt customer
                          history { edges { node { kind quantity actor } } } } }
    event { id ticketsAvailable waitlistLength }
"""
JOIN = mutation(
    "joinWaitlist",
    f"""__typename ... on WaitlistPayload {{ {ENTRY} }} ... on Error {{ message }}
    ... on TicketsAvailable {{ available }} ... on CustomerLimitReached {{ limit held }}
    ... on InvalidQuantity {{ min max }}""",
)
LEAVE = mutation(
    "leaveWaitlist", f"__typename ... on WaitlistPayload {{ {ENTRY} }} ... on Error {{ message }}"
)
RESERVE = create_reservation(
    "__typename ... on ReservationPayload { reservation { id } event { ticketsAvailable } }"
)
CANCEL = mutation(
    "cancelReservation",
    "__typename ... on ReservationPayload { event { ticketsAvailable waitlistLength } }",
)
DECREASE = mutation(
    "updateReservation", "__typename ... on ReservationPayload { event { ticketsAvailable } }"
)
UPDATE_EVENT = mutation(
    "updateEvent", "__typename ... on EventPayload { event { ticketsAvailable waitlistLength } }"
)
ENTRY_BY_ID = f"""query($id: ID!) {{ node(id: $id) {{ ... on WaitlistEntry {{
    {ENTRY.split("event {")[0].strip()[7:-1]} }} }} }}"""


def join(client: TestClient, event_id: str, quantity: int, who: str = "alice") -> Any:
    return data(
        client, JOIN, {"input": {"eventId": event_id, "quantity": quantity}}, headers=auth(who)
    )["joinWaitlist"]


def reserve(client: TestClient, event_id: str, quantity: int, who: str) -> str:
    made = data(
        client, RESERVE, {"input": {"eventId": event_id, "quantity": quantity}}, headers=auth(who)
    )["createReservation"]
    assert made["__typename"] == "ReservationPayload", made
    reservation_id: str = made["reservation"]["id"]
    return reservation_id


def cancel(client: TestClient, reservation_id: str, who: str) -> Any:
    return data(client, CANCEL, {"input": {"reservationId": reservation_id}}, headers=auth(who))[
        "cancelReservation"
    ]


def entry(client: TestClient, entry_id: str, who: str = "alice") -> Any:
    return data(client, ENTRY_BY_ID, {"id": entry_id}, headers=auth(who))["node"]


def sold_out(engine: Engine, client: TestClient, **kwargs: Any) -> tuple[str, str]:
    """An event of 4 tickets, all reserved by `holder` in one reservation."""
    kwargs.setdefault("capacity", 4)
    event_id = insert_event(engine, **kwargs)
    return event_id, reserve(client, event_id, kwargs["capacity"], "holder")


def test_joining_while_tickets_are_on_sale_says_reserve_instead(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=5)
    before = snapshot(engine)
    refused = join(client, event_id, 3)
    assert refused["__typename"] == "TicketsAvailable"
    assert refused["available"] == 5
    assert snapshot(engine) == before


def test_entries_wait_in_order_and_show_their_place(client: TestClient, engine: Engine) -> None:
    event_id, _ = sold_out(engine, client)
    first = join(client, event_id, 2, "alice")
    second = join(client, event_id, 1, "bob")
    assert first["entry"]["status"] == "WAITING"
    assert (first["entry"]["position"], second["entry"]["position"]) == (1, 2)
    assert second["event"]["waitlistLength"] == 2
    assert first["entry"]["reservation"] is None


def test_freed_tickets_are_offered_in_order_skipping_what_does_not_fit(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=4, hold_minutes=10)
    holds = [reserve(client, event_id, 2, "holder"), reserve(client, event_id, 2, "holder2")]
    too_big = join(client, event_id, 3, "alice")["entry"]
    fits = join(client, event_id, 2, "bob")["entry"]
    later = join(client, event_id, 1, "carol")["entry"]
    freed = cancel(client, holds[0], "holder")
    # Two tickets came back: alice's 3 don't fit, bob's 2 do; nothing is left for carol or
    # for anyone else.
    assert freed["event"] == {"ticketsAvailable": 0, "waitlistLength": 2}
    served = entry(client, fits["id"], "bob")
    assert served["status"] == "OFFERED"
    assert served["position"] is None
    offer = served["reservation"]
    assert (offer["status"], offer["quantity"], offer["customer"]) == ("HELD", 2, "bob")
    assert history(offer) == [{"kind": "OFFERED", "quantity": 2, "actor": "SYSTEM"}]
    assert entry(client, too_big["id"])["position"] == 1
    assert entry(client, later["id"], "carol")["position"] == 2
    assert invariant_violations(engine) == []


def test_an_offer_lasts_30_minutes_on_an_event_without_a_hold_time(
    client: TestClient, engine: Engine
) -> None:
    event_id, held = sold_out(engine, client)
    waiting = join(client, event_id, 1)["entry"]
    cancel(client, held, "holder")
    offer = entry(client, waiting["id"])["reservation"]
    with engine.connect() as connection:
        now = connection.scalar(sa.text("SELECT now()"))
    left = datetime.fromisoformat(offer["expiresAt"]) - now
    assert timedelta(minutes=29) < left <= timedelta(minutes=30, seconds=5)
    # The rest of the freed tickets went back on sale.
    assert entry(client, waiting["id"])["status"] == "OFFERED"
    assert invariant_violations(engine) == []


def test_an_offer_skips_a_customer_it_would_take_over_the_limit(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=4, max_tickets_per_customer=2)
    reserve(client, event_id, 1, "carol")
    reserve(client, event_id, 2, "holder")
    bob_holds = reserve(client, event_id, 1, "bob")
    refused = join(client, event_id, 2, "carol")  # 1 held + 2 > 2
    assert (refused["__typename"], refused["held"]) == ("CustomerLimitReached", 1)
    carol = join(client, event_id, 1, "carol")["entry"]
    dave = join(client, event_id, 1, "dave")["entry"]
    # A lower limit doesn't remove a waiting entry, but the offer checks it again.
    data(
        client,
        UPDATE_EVENT,
        {"input": {"eventId": event_id, "maxTicketsPerCustomer": 1}},
        headers=ORGANIZER,
    )
    cancel(client, bob_holds, "bob")
    assert entry(client, carol["id"], "carol")["position"] == 1
    assert entry(client, dave["id"], "dave")["status"] == "OFFERED"
    assert invariant_violations(engine) == []


def test_an_expired_offer_goes_to_the_next_in_line(
    client: TestClient, engine: Engine, database_clock: DatabaseClock
) -> None:
    event_id, held = sold_out(engine, client, hold_minutes=5)
    first = join(client, event_id, 4, "alice")["entry"]
    second = join(client, event_id, 4, "bob")["entry"]
    cancel(client, held, "holder")
    assert entry(client, first["id"])["status"] == "OFFERED"
    database_clock.advance(timedelta(minutes=5))
    # Any lock of the event settles it, here a reservation attempt (refused: the freed
    # tickets go to bob, so its release is rolled back and left to the sweeper).
    attempt = data(
        client, RESERVE, {"input": {"eventId": event_id, "quantity": 1}}, headers=auth("eve")
    )["createReservation"]
    assert attempt["__typename"] == "NotEnoughTickets"
    offered = entry(client, first["id"])["reservation"]
    assert offered["status"] in ("HELD", "EXPIRED")  # the sweeper may not have run yet
    bob = _eventually_offered(client, second["id"], "bob")
    assert bob["reservation"]["status"] == "HELD"
    assert entry(client, first["id"])["reservation"]["status"] == "EXPIRED"
    assert invariant_violations(engine) == []


def _eventually_offered(client: TestClient, entry_id: str, who: str) -> Any:
    """The entry once offered: the sweeper's work, which runs every 0.25 s."""
    deadline = time.monotonic() + 5
    while True:
        found = entry(client, entry_id, who)
        if found["status"] == "OFFERED" or time.monotonic() > deadline:
            assert found["status"] == "OFFERED"
            return found
        time.sleep(0.05)


def test_more_capacity_serves_the_waitlist_first(client: TestClient, engine: Engine) -> None:
    event_id, _ = sold_out(engine, client)
    waiting = join(client, event_id, 2)["entry"]
    grown = data(
        client, UPDATE_EVENT, {"input": {"eventId": event_id, "capacity": 7}}, headers=ORGANIZER
    )["updateEvent"]
    assert grown["event"] == {"ticketsAvailable": 1, "waitlistLength": 0}
    assert entry(client, waiting["id"])["status"] == "OFFERED"


def test_leaving_and_leaving_again(client: TestClient, engine: Engine) -> None:
    event_id, _ = sold_out(engine, client)
    waiting = join(client, event_id, 2)["entry"]
    assert (
        data(client, LEAVE, {"input": {"entryId": waiting["id"]}}, headers=auth("bob"))[
            "leaveWaitlist"
        ]["__typename"]
        == "NotFound"
    )
    left = data(client, LEAVE, {"input": {"entryId": waiting["id"]}}, headers=auth())[
        "leaveWaitlist"
    ]
    assert (left["entry"]["status"], left["entry"]["position"]) == ("LEFT", None)
    assert left["event"]["waitlistLength"] == 0
    before = snapshot(engine)
    again = data(client, LEAVE, {"input": {"entryId": waiting["id"]}}, headers=auth())
    assert again["leaveWaitlist"]["entry"]["status"] == "LEFT"
    assert snapshot(engine) == before


def test_cancelling_the_event_closes_its_waitlist(client: TestClient, engine: Engine) -> None:
    event_id, _ = sold_out(engine, client)
    waiting = join(client, event_id, 1)["entry"]
    data(
        client,
        mutation("cancelEvent", "__typename"),
        {"input": {"eventId": event_id}},
        headers=ORGANIZER,
    )
    assert entry(client, waiting["id"])["status"] == "CLOSED"
    assert invariant_violations(engine) == []


@pytest.mark.parametrize(
    ("setup", "quantity", "expected"),
    [
        ("cancelled", 1, "EventCancelled"),
        ("started", 1, "EventStarted"),
        ("sold out", 0, "InvalidQuantity"),
        ("sold out", 5, "InvalidQuantity"),
    ],
)
def test_joining_is_refused_with_a_typed_error(
    client: TestClient, engine: Engine, setup: str, quantity: int, expected: str
) -> None:
    if setup == "cancelled":
        event_id = insert_event(engine, capacity=4, tickets_available=4, status="CANCELLED")
    else:
        event_id, _ = sold_out(engine, client)
        if setup == "started":
            start_event_now(engine, event_id)
    before = snapshot(engine)
    assert join(client, event_id, quantity)["__typename"] == expected
    assert snapshot(engine) == before


def test_who_sees_which_entries(client: TestClient, engine: Engine) -> None:
    event_id, _ = sold_out(engine, client)
    alice = join(client, event_id, 1, "alice")["entry"]
    join(client, event_id, 2, "bob")
    assert entry(client, alice["id"], "bob") is None
    assert (
        data(client, ENTRY_BY_ID, {"id": alice["id"]}, headers=ORGANIZER)["node"]["id"]
        == (alice["id"])
    )
    mine = data(
        client,
        "{ myWaitlistEntries(status: WAITING) { totalCount edges { node { customer } } } }",
        headers=auth("alice"),
    )["myWaitlistEntries"]
    assert mine == {"totalCount": 1, "edges": [{"node": {"customer": "alice"}}]}
    line = """query($id: ID!) { event(id: $id) { waitlistLength
        waitlist(first: 10) { totalCount edges { node { customer position } } } } }"""
    assert data(client, line, {"id": event_id}, headers=auth("alice"))["event"] == {
        "waitlistLength": 2,
        "waitlist": None,
    }
    organized = data(client, line, {"id": event_id}, headers=ORGANIZER)["event"]["waitlist"]
    assert organized["edges"] == [
        {"node": {"customer": "alice", "position": 1}},
        {"node": {"customer": "bob", "position": 2}},
    ]


def test_a_repeated_join_with_its_key_joins_once(client: TestClient, engine: Engine) -> None:
    event_id, _ = sold_out(engine, client)
    variables = {"input": {"eventId": event_id, "quantity": 1, "idempotencyKey": "join-1"}}
    first = data(client, JOIN, variables, headers=auth())["joinWaitlist"]
    again = data(client, JOIN, variables, headers=auth())["joinWaitlist"]
    assert again["entry"]["id"] == first["entry"]["id"]
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM waitlist_entry")) == 1
