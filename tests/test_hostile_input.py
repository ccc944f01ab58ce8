"""Input that tries to slip past validation: each gets a clear, typed answer, never a 500,
and changes nothing."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import CREATE_EVENT, EVENTS, RESERVE_TICKETS, UPDATE_EVENT
from tests.helpers import (
    JWT_SECRET,
    ORGANIZER,
    auth,
    data,
    gql,
    history,
    insert_event,
    new_event,
    snapshot,
    start_event_now,
)
from ticketing.api.ids import key_of

NUL = "\x00"


def post_raw(client: TestClient, body: str, **headers: str) -> Any:
    return client.post(
        "/graphql", content=body, headers={"Content-Type": "application/json", **headers}
    )


@pytest.mark.parametrize("field", ["name", "venue", "description"])
def test_nul_in_event_text_is_invalid_event(client: TestClient, engine: Engine, field: str) -> None:
    before = snapshot(engine)
    refused = data(
        client, CREATE_EVENT, {"input": new_event(**{field: f"Gala{NUL}"})}, headers=ORGANIZER
    )["createEvent"]
    assert (refused["__typename"], refused["field"]) == ("InvalidEvent", field)
    assert snapshot(engine) == before


@pytest.mark.parametrize("when", ["9999-12-31T23:30:00-01:00", "9999-12-31T23:59:59+14:00"])
@pytest.mark.parametrize("field", ["startsAt", "endsAt"])
def test_times_beyond_the_horizon_are_invalid_event(
    client: TestClient, engine: Engine, field: str, when: str
) -> None:
    before = snapshot(engine)
    refused = data(client, CREATE_EVENT, {"input": new_event(**{field: when})}, headers=ORGANIZER)[
        "createEvent"
    ]
    assert (refused["__typename"], refused["field"]) == ("InvalidEvent", field)
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    "where",
    [
        {"search": f"jazz{NUL}"},
        {"search": "x" * 201},
        {"startsAfter": "2030-01-01T00:00:00"},
        {"startsBefore": "2030-01-01T00:00:00"},
    ],
)
def test_bad_filters_are_bad_user_input(client: TestClient, where: dict[str, Any]) -> None:
    body = gql(client, EVENTS, {"filter": where})
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def cursor(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("order", "position"),
    [
        ("NAME_ASC", ["NAME_ASC", f"a{NUL}", 1]),
        ("STARTS_AT_ASC", ["STARTS_AT_ASC", "2030-01-01T00:00:00+00:00", True]),
        ("STARTS_AT_ASC", ["STARTS_AT_ASC", "2030-01-01T00:00:00+00:00", 2**63]),
        ("STARTS_AT_ASC", ["STARTS_AT_ASC", "not a time", 1]),
        ("NAME_ASC", ["NAME_ASC", 5, 1]),
    ],
)
def test_crafted_event_cursors_are_bad_user_input(
    client: TestClient, engine: Engine, order: str, position: list[Any]
) -> None:
    insert_event(engine)
    body = gql(client, EVENTS, {"orderBy": order, "after": cursor(position)})
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize("position", [[True], [0], [-5], ["1"], [1.5], [1, 2]])
def test_crafted_reservation_cursors_are_bad_user_input(
    client: TestClient, position: list[Any]
) -> None:
    query = "query($after: String) { myReservations(after: $after) { totalCount } }"
    body = gql(client, query, {"after": cursor(position)}, headers=auth())
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_null_page_size_and_order_mean_the_defaults(client: TestClient, engine: Engine) -> None:
    for day in range(1, 25):
        insert_event(engine, name=f"E{day:02}", starts_in=timedelta(days=day))
    page = data(client, EVENTS, {"first": None, "orderBy": None})["events"]
    assert len(page["edges"]) == 20
    assert page["edges"][0]["node"]["name"] == "E01"


@pytest.mark.parametrize(
    "body",
    [
        '{"query": "{ events { totalCount } }", "variables": {"x": "\\ud800"}}',
        '{"query": "query($id: ID!) { event(id: $id) { id } }", "variables": {"id": "\\udfff"}}',
        '{"query": "query A { events { totalCount } }", "operationName": "A\\ud800"}',
        '{"query": "{ events { totalCount } }", "variables": ' + "[" * 40_000 + "]" * 40_000 + "}",
    ],
    ids=["surrogate-variable", "surrogate-id", "surrogate-operation-name", "deep-json"],
)
def test_unencodable_or_deep_json_is_a_400_json_error(client: TestClient, body: str) -> None:
    response = post_raw(client, body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def signed(sub: object) -> dict[str, str]:
    now = datetime.now(UTC)
    claims = {"sub": sub, "iat": now, "exp": now + timedelta(hours=1)}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


@pytest.mark.parametrize("sub", [f"al{NUL}ice", "x" * 256, " alice", "\ud800", "tab\there"])
def test_unusable_token_subjects_are_unauthenticated(client: TestClient, sub: str) -> None:
    body = gql(client, "{ events { totalCount } }", headers=signed(sub), expect_status=401)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_padded_or_non_canonical_ids_are_not_ids(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    assert event_id == "RXZlbnQ6MQ"
    query = "query($id: ID!) { event(id: $id) { id } }"
    for variant in ("RXZlbnQ6MQ==", "RXZlbnQ6MDE", "RXZlbnQ6KzE"):  # padded, "01", "+1"
        assert data(client, query, {"id": variant}) == {"event": None}
    assert data(client, query, {"id": event_id}) == {"event": {"id": event_id}}


def test_several_mutations_in_one_request_each_see_fresh_data(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    first = data(
        client,
        RESERVE_TICKETS,
        {"eventId": event_id, "n": 2},
        headers=auth(),
    )["createReservation"]["reservation"]["id"]
    fields = """... on ReservationPayload { reservation { quantity
        history { edges { node { kind } } } event { ticketsAvailable } }
        event { ticketsAvailable } }"""
    query = f"""mutation($id: ID!) {{
        a: updateReservation(input: {{reservationId: $id, operation: INCREASE, quantity: 1}})
            {{ {fields} }}
        b: updateReservation(input: {{reservationId: $id, operation: INCREASE, quantity: 1}})
            {{ {fields} }}
        c: cancelReservation(input: {{reservationId: $id}}) {{ {fields} }}
    }}"""
    result = data(client, query, {"id": first}, headers=auth())
    assert [c["kind"] for c in history(result["b"]["reservation"])] == [
        "CREATED",
        "INCREASED",
        "INCREASED",
    ]
    assert result["b"]["reservation"]["event"]["ticketsAvailable"] == 6
    assert result["b"]["event"]["ticketsAvailable"] == 6
    assert [c["kind"] for c in history(result["c"]["reservation"])][-1] == "CANCELLED"
    assert result["c"]["reservation"]["event"]["ticketsAvailable"] == 10


def test_a_started_event_cannot_be_edited(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    start_event_now(engine, event_id)
    before = snapshot(engine)
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    for change in ({"startsAt": later}, {"capacity": 0}, {"name": "Again"}):
        result = data(
            client, UPDATE_EVENT, {"input": {"eventId": event_id, **change}}, headers=ORGANIZER
        )["updateEvent"]
        assert result["__typename"] == "EventStarted"
    assert snapshot(engine) == before


# --- Times with every offset ------------------------------------------------------------------

# A grid over every offset a client can write, with the edges drawn by PostgreSQL (±15:59) and
# Python (±23:59); ±24:00 can't even be parsed.
OFFSET_MINUTES = sorted(
    {*range(-(24 * 60 - 1), 24 * 60, 97), 0, 20 * 60}
    | {sign * edge for sign in (1, -1) for edge in (15 * 60 + 59, 16 * 60, 23 * 60 + 59)}
)
FIRST_MOMENT, LAST_MOMENT = "0001-01-01T00:00:00", "9999-12-31T23:59:59"


def offset_text(minutes: int) -> str:
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02}:{abs(minutes) % 60:02}"


def written_with_offset(moment: datetime, minutes: int) -> str:
    local = moment.astimezone(timezone(timedelta(minutes=minutes))).replace(tzinfo=None)
    return local.isoformat() + offset_text(minutes)


def beyond_python(local: str, minutes: int) -> bool:
    """Whether the time lies before year 1 or after 9999 once brought to UTC."""
    return (local == FIRST_MOMENT and minutes > 0) or (local == LAST_MOMENT and minutes < 0)


def event_reads(when: str) -> list[dict[str, Any]]:
    """The variables of every `events` read that takes a time: both filters, and cursors of
    both time orders."""
    return [
        {"filter": {"startsAfter": when}},
        {"filter": {"startsBefore": when}},
        {"orderBy": "STARTS_AT_ASC", "after": cursor(["STARTS_AT_ASC", when, 1])},
        {"orderBy": "STARTS_AT_DESC", "after": cursor(["STARTS_AT_DESC", when, 1])},
    ]


def starts_at_in_database(engine: Engine, event_id: str) -> datetime:
    with engine.connect() as connection:
        starts_at: datetime = connection.scalar(
            sa.text("SELECT starts_at FROM event WHERE id = :id"), {"id": key_of(event_id, "Event")}
        )
    return starts_at


def test_event_reads_take_every_offset_and_refuse_unrepresentable_times(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, name="Gala")
    starts_at = starts_at_in_database(engine, event_id)
    refused: list[str] = []
    for minutes in OFFSET_MINUTES:
        for local in (FIRST_MOMENT, LAST_MOMENT):
            when = local + offset_text(minutes)
            for variables in event_reads(when):
                body = gql(client, EVENTS, variables)
                if beyond_python(local, minutes):
                    assert body["data"] is None, (variables, body)
                    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
                    refused.append(when)
                else:
                    assert "errors" not in body, (variables, body)
        # The same instant written with any offset selects the same events.
        just_before = written_with_offset(starts_at - timedelta(seconds=1), minutes)
        at_start = written_with_offset(starts_at, minutes)
        listed = data(client, EVENTS, {"filter": {"startsAfter": just_before}})["events"]
        assert [edge["node"]["name"] for edge in listed["edges"]] == ["Gala"], just_before
        assert data(client, EVENTS, {"filter": {"startsAfter": at_start}})["events"]["edges"] == []
        after_cursor = cursor(["STARTS_AT_DESC", written_with_offset(starts_at, minutes), 2])
        listed = data(client, EVENTS, {"orderBy": "STARTS_AT_DESC", "after": after_cursor})
        assert [edge["node"]["name"] for edge in listed["events"]["edges"]] == ["Gala"]
    assert len(refused) == 4 * sum(1 for minutes in OFFSET_MINUTES if minutes != 0)


@pytest.mark.parametrize("when", ["2030-01-01T00:00:00+24:00", "2030-01-01T00:00:00-24:00"])
def test_offsets_of_a_day_or_more_are_bad_user_input_everywhere(
    client: TestClient, engine: Engine, when: str
) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    for variables in event_reads(when):
        body = gql(client, EVENTS, variables)
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", variables
    for field in ("startsAt", "endsAt"):
        for query, given in (
            (CREATE_EVENT, new_event(**{field: when})),
            (UPDATE_EVENT, {"eventId": event_id, field: when}),
        ):
            body = gql(client, query, {"input": given}, headers=ORGANIZER)
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", (field, body)
    assert snapshot(engine) == before


def test_event_times_take_every_offset_and_refuse_unrepresentable_ones(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    for minutes in OFFSET_MINUTES:
        for local in (FIRST_MOMENT, LAST_MOMENT):
            when = local + offset_text(minutes)
            for field in ("startsAt", "endsAt"):
                for mutation, query, given in (
                    ("createEvent", CREATE_EVENT, new_event(**{field: when})),
                    ("updateEvent", UPDATE_EVENT, {"eventId": event_id, field: when}),
                ):
                    refused = data(client, query, {"input": given}, headers=ORGANIZER)[mutation]
                    assert (refused["__typename"], refused["field"]) == ("InvalidEvent", field)
    assert snapshot(engine) == before
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    for minutes in OFFSET_MINUTES:
        when = written_with_offset(soon, minutes)
        created = data(client, CREATE_EVENT, {"input": new_event(startsAt=when)}, headers=ORGANIZER)
        assert datetime.fromisoformat(created["createEvent"]["event"]["startsAt"]) == soon, when
        updated = data(
            client,
            UPDATE_EVENT,
            {"input": {"eventId": event_id, "startsAt": when}},
            headers=ORGANIZER,
        )
        assert datetime.fromisoformat(updated["updateEvent"]["event"]["startsAt"]) == soon, when
        assert starts_at_in_database(engine, event_id) == soon
