"""Reservations over GraphQL: each mutation's success and every typed refusal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import create_reservation, mutation
from tests.helpers import (
    ORGANIZER,
    auth,
    data,
    gql,
    history,
    insert_event,
    invariant_violations,
    snapshot,
    start_event_now,
)
from ticketing.api.ids import key_of

COMMON = """
    __typename
    ... on ReservationPayload {
        reservation { id quantity status cancelledAt customer
                      history { edges { node { kind quantity actor createdAt } } } }
        event { id ticketsAvailable }
    }
    ... on Error { message }
    ... on NotFound { id }
"""
PAYLOAD = (
    COMMON
    + """
    ... on InvalidQuantity { min max }
    ... on NotEnoughTickets { requested available }
    ... on CustomerLimitReached { limit held }
"""
)
CREATE = create_reservation(PAYLOAD)
UPDATE = mutation("updateReservation", PAYLOAD)
CANCEL = mutation("cancelReservation", COMMON)


def create(client: TestClient, event_id: str, quantity: int, who: str = "alice") -> Any:
    return data(
        client, CREATE, {"input": {"eventId": event_id, "quantity": quantity}}, headers=auth(who)
    )["createReservation"]


def update(
    client: TestClient, reservation_id: str, operation: str, quantity: int, who: str = "alice"
) -> Any:
    variables = {
        "input": {"reservationId": reservation_id, "operation": operation, "quantity": quantity}
    }
    return data(client, UPDATE, variables, headers=auth(who))["updateReservation"]


def cancel(client: TestClient, reservation_id: str, headers: dict[str, str] | None = None) -> Any:
    return data(
        client,
        CANCEL,
        {"input": {"reservationId": reservation_id}},
        headers=headers or auth("alice"),
    )["cancelReservation"]


def test_create_reservation_takes_tickets_and_records_history(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    result = create(client, event_id, 3)
    assert result["__typename"] == "ReservationPayload"
    assert result["reservation"]["quantity"] == 3
    assert result["reservation"]["status"] == "ACTIVE"
    assert result["reservation"]["customer"] == "alice"
    assert result["event"] == {"id": event_id, "ticketsAvailable": 7}
    assert [(c["kind"], c["quantity"], c["actor"]) for c in history(result["reservation"])] == [
        ("CREATED", 3, "CUSTOMER")
    ]
    assert invariant_violations(engine) == []


def test_increase_and_decrease_move_tickets(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    reservation_id = create(client, event_id, 2)["reservation"]["id"]
    increased = update(client, reservation_id, "INCREASE", 5)
    assert increased["reservation"]["quantity"] == 7
    assert increased["event"]["ticketsAvailable"] == 3
    decreased = update(client, reservation_id, "DECREASE", 4)
    assert decreased["reservation"]["quantity"] == 3
    assert decreased["event"]["ticketsAvailable"] == 7
    assert [(c["kind"], c["quantity"]) for c in history(decreased["reservation"])] == [
        ("CREATED", 2),
        ("INCREASED", 5),
        ("DECREASED", 4),
    ]
    assert invariant_violations(engine) == []


def test_cancel_releases_tickets_and_a_retry_returns_it_unchanged(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    reservation_id = create(client, event_id, 4)["reservation"]["id"]
    cancelled = cancel(client, reservation_id)
    assert cancelled["reservation"]["status"] == "CANCELLED"
    assert cancelled["reservation"]["cancelledAt"] is not None
    assert cancelled["event"]["ticketsAvailable"] == 10
    before = snapshot(engine)
    again = cancel(client, reservation_id)
    assert again == cancelled
    assert snapshot(engine) == before
    assert [c["kind"] for c in history(again["reservation"])] == ["CREATED", "CANCELLED"]


def test_not_enough_tickets(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=5)
    reservation_id = create(client, event_id, 4)["reservation"]["id"]
    before = snapshot(engine)
    refused = create(client, event_id, 2, who="bob")
    assert refused["__typename"] == "NotEnoughTickets"
    assert (refused["requested"], refused["available"]) == (2, 1)
    refused = update(client, reservation_id, "INCREASE", 2)
    assert refused["__typename"] == "NotEnoughTickets"
    assert (refused["requested"], refused["available"]) == (2, 1)
    assert snapshot(engine) == before


def test_customer_limit_counts_all_active_reservations(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=50, max_tickets_per_customer=4)
    first = create(client, event_id, 3)["reservation"]["id"]
    before = snapshot(engine)
    refused = create(client, event_id, 2)
    assert refused["__typename"] == "CustomerLimitReached"
    assert (refused["limit"], refused["held"]) == (4, 3)
    refused = update(client, first, "INCREASE", 2)
    assert refused["__typename"] == "CustomerLimitReached"
    assert snapshot(engine) == before
    # Another customer has their own allowance; cancelled tickets no longer count.
    assert create(client, event_id, 4, who="bob")["__typename"] == "ReservationPayload"
    cancel(client, first)
    assert create(client, event_id, 4)["__typename"] == "ReservationPayload"


@pytest.mark.parametrize("quantity", [0, -1, -2147483648])
def test_non_positive_quantities_are_invalid(
    client: TestClient, engine: Engine, quantity: int
) -> None:
    event_id = insert_event(engine)
    reservation_id = create(client, event_id, 2)["reservation"]["id"]
    before = snapshot(engine)
    for result in (
        create(client, event_id, quantity),
        update(client, reservation_id, "INCREASE", quantity),
        update(client, reservation_id, "DECREASE", quantity),
    ):
        assert result["__typename"] == "InvalidQuantity"
        assert result["min"] == 1
    assert snapshot(engine) == before


def test_huge_quantity_is_not_enough_tickets(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    refused = create(client, event_id, 2147483647)
    assert refused["__typename"] == "NotEnoughTickets"
    assert snapshot(engine) == before


def test_decrease_must_leave_a_ticket(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    reservation_id = create(client, event_id, 3)["reservation"]["id"]
    before = snapshot(engine)
    for quantity in (3, 4):
        refused = update(client, reservation_id, "DECREASE", quantity)
        assert refused["__typename"] == "InvalidQuantity"
        assert (refused["min"], refused["max"]) == (1, 2)
        assert "cancel" in refused["message"]
    assert snapshot(engine) == before


def test_cancelled_reservation_cannot_change(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    reservation_id = create(client, event_id, 3)["reservation"]["id"]
    cancel(client, reservation_id)
    before = snapshot(engine)
    for operation in ("INCREASE", "DECREASE"):
        assert update(client, reservation_id, operation, 1)["__typename"] == "ReservationCancelled"
    assert snapshot(engine) == before


def test_cancelled_event_takes_no_reservations(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, status="CANCELLED")
    before = snapshot(engine)
    assert create(client, event_id, 1)["__typename"] == "EventCancelled"
    assert snapshot(engine) == before


def test_started_event_freezes_its_reservations(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    reservation_id = create(client, event_id, 3)["reservation"]["id"]
    start_event_now(engine, event_id)
    before = snapshot(engine)
    assert create(client, event_id, 1)["__typename"] == "EventStarted"
    assert update(client, reservation_id, "INCREASE", 1)["__typename"] == "EventStarted"
    assert update(client, reservation_id, "DECREASE", 1)["__typename"] == "EventStarted"
    assert cancel(client, reservation_id)["__typename"] == "EventStarted"
    assert cancel(client, reservation_id, ORGANIZER)["__typename"] == "EventStarted"
    assert snapshot(engine) == before


def test_unknown_and_malformed_ids_are_not_found(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    reservation_id = create(client, event_id, 1)["reservation"]["id"]
    before = snapshot(engine)
    missing_event = "RXZlbnQ6OTk5OTk"  # Event:99999
    for bad in (missing_event, "not-an-id", "", reservation_id, "RXZlbnQ6LTE"):
        refused = create(client, bad, 1)
        assert refused["__typename"] == "NotFound", bad
        assert refused["id"] == bad
    for bad in (event_id, "garbage", "UmVzZXJ2YXRpb246OTk5OTk"):
        assert update(client, bad, "INCREASE", 1)["__typename"] == "NotFound"
        assert cancel(client, bad)["__typename"] == "NotFound"
    assert snapshot(engine) == before


def test_someone_elses_reservation_is_not_found(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    reservation_id = create(client, event_id, 2)["reservation"]["id"]
    before = snapshot(engine)
    assert update(client, reservation_id, "INCREASE", 1, who="mallory")["__typename"] == "NotFound"
    assert update(client, reservation_id, "DECREASE", 1, who="mallory")["__typename"] == "NotFound"
    assert cancel(client, reservation_id, auth("mallory"))["__typename"] == "NotFound"
    query = "query($id: ID!) { reservation(id: $id) { id } node(id: $id) { id } }"
    assert data(client, query, {"id": reservation_id}, headers=auth("mallory")) == {
        "reservation": None,
        "node": None,
    }
    assert snapshot(engine) == before
    # Its event's organizer may see and cancel it, but not change its quantity.
    assert data(client, query, {"id": reservation_id}, headers=ORGANIZER)["reservation"]
    assert update(client, reservation_id, "INCREASE", 1, who="olivia")["__typename"] == "NotFound"
    cancelled = cancel(client, reservation_id, ORGANIZER)
    assert history(cancelled["reservation"])[-1]["actor"] == "ORGANIZER"


def test_mutations_need_a_token(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    body = gql(client, CREATE, {"input": {"eventId": event_id, "quantity": 1}}, expect_status=401)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"input": {"eventId": "x"}}, "quantity"),
        ({"input": {"eventId": "x", "quantity": 2147483648}}, "32-bit"),
        ({"input": {"eventId": "x", "quantity": "two"}}, "Int"),
        ({"input": {"eventId": 5, "quantity": 1.5}}, "Int"),
        ({"input": {"eventId": None, "quantity": 1}}, "eventId"),
        ({}, "input"),
    ],
)
def test_malformed_input_is_a_clear_request_error(
    client: TestClient, engine: Engine, variables: dict[str, Any], fragment: str
) -> None:
    insert_event(engine)
    before = snapshot(engine)
    body = gql(client, CREATE, variables, headers=auth())
    assert "data" not in body
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert fragment in error["message"]
    assert snapshot(engine) == before


def test_wrong_enum_value_is_a_validation_error(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    reservation_id = create(client, event_id, 1)["reservation"]["id"]
    body = gql(
        client,
        "mutation($id: ID!) { updateReservation(input: {reservationId: $id, operation: DOUBLE,"
        " quantity: 1}) { __typename } }",
        {"id": reservation_id},
        headers=auth(),
    )
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "DOUBLE" in body["errors"][0]["message"]


def test_timeline_of_a_reservation_is_append_only(client: TestClient, engine: Engine) -> None:
    import sqlalchemy as sa

    event_id = insert_event(engine, starts_in=timedelta(days=1))
    create(client, event_id, 1)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(sa.text("UPDATE reservation_change SET quantity = 5"))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM reservation_change"))


MY_RESERVATIONS = """query($first: Int) {
    myReservations(first: $first) {
        totalCount
        edges { node { quantity status event { name startsAt ticketsAvailable } } }
    }
}"""


def test_my_reservations_takes_the_same_few_statements_whatever_the_page_size(
    client: TestClient, engine: Engine
) -> None:
    for _ in range(30):
        create(client, insert_event(engine, capacity=5), 1)
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # Not the hold sweeper's look for due holds, which runs every 0.25 s meanwhile, nor
        # the live-update listener's check that it hears, once after connecting.
        if not ("DISTINCT" in statement and "ticketing_now()" in statement) and (
            "pg_notify" not in statement
        ):
            sent.append(statement)

    statements = {}
    for size in (5, 30):
        sent.clear()
        sa.event.listen(Engine, "before_cursor_execute", count)
        try:
            page = data(client, MY_RESERVATIONS, {"first": size}, headers=auth())
        finally:
            sa.event.remove(Engine, "before_cursor_execute", count)
        assert len(page["myReservations"]["edges"]) == size
        statements[size] = len(sent)
    # The page, its events (one query for all) and the total count.
    assert statements == {5: 3, 30: 3}


def test_a_long_history_is_paged(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    reservation_id = create(client, event_id, 2)["reservation"]["id"]
    with engine.begin() as connection:  # as 249 INCREASE/DECREASE requests would leave it
        connection.execute(
            sa.text(
                "INSERT INTO reservation_change (reservation_id, kind, quantity, actor, actor_role)"
                " SELECT :id, 'INCREASED', n, 'alice', 'CUSTOMER' FROM generate_series(1, 249) AS n"
            ),
            {"id": key_of(reservation_id, "Reservation")},
        )
    query = """query($id: ID!, $first: Int, $after: String) { reservation(id: $id) {
        history(first: $first, after: $after) { totalCount
            edges { node { kind quantity } } pageInfo { hasNextPage endCursor } } } }"""
    seen: list[tuple[str, int]] = []
    after = None
    for _ in range(3):
        page = data(
            client, query, {"id": reservation_id, "first": 100, "after": after}, headers=auth()
        )["reservation"]["history"]
        assert page["totalCount"] == 250
        seen += [(edge["node"]["kind"], edge["node"]["quantity"]) for edge in page["edges"]]
        after = page["pageInfo"]["endCursor"]
    assert not page["pageInfo"]["hasNextPage"]
    assert seen == [("CREATED", 2)] + [("INCREASED", n) for n in range(1, 250)]
    default_page = data(client, query, {"id": reservation_id}, headers=auth())
    assert len(default_page["reservation"]["history"]["edges"]) == 20
    for bad in ({"first": 101}, {"first": 0}, {"after": "bm90IGEgY3Vyc29y"}):
        body = gql(client, query, {"id": reservation_id, **bad}, headers=auth())
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_histories_count_against_the_cost_limit(client: TestClient, engine: Engine) -> None:
    history_of_each = "history(first: 100) { edges { node { kind } } }"
    body = gql(
        client,
        f"{{ myReservations(first: 100) {{ edges {{ node {{ {history_of_each} }} }} }} }}",
        headers=auth(),
    )
    assert body["errors"][0]["extensions"]["limit"] == "cost"
    aliased = " ".join(f"h{i}: {history_of_each}" for i in range(30))
    body = gql(client, f"{{ myReservations {{ edges {{ node {{ {aliased} }} }} }} }}")
    assert body["errors"][0]["extensions"]["limit"] == "cost"
