"""Idempotency keys: a retried createReservation or updateReservation happens once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import create_reservation, mutation
from tests.helpers import (
    JWT_SECRET,
    ORGANIZER,
    auth,
    data,
    gql,
    insert_event,
    invariant_violations,
    make_settings,
    snapshot,
)
from tests.servers import RunningServer, serve
from ticketing.app import create_app

RESULT = """__typename ... on ReservationPayload { reservation { id quantity status updatedAt }
    event { ticketsAvailable } } ... on Error { message }"""
CREATE = create_reservation(RESULT)
UPDATE = mutation("updateReservation", RESULT)


def create(
    client: TestClient,
    event_id: str,
    quantity: int,
    key: str | None = None,
    who: str = "alice",
    headers: dict[str, str] | None = None,
) -> Any:
    variables = {"input": {"eventId": event_id, "quantity": quantity, "idempotencyKey": key}}
    return data(client, CREATE, variables, headers={**auth(who), **(headers or {})})[
        "createReservation"
    ]


def reservations(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT count(*) FROM reservation")) or 0)


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"DATABASE_URL": database_url, "TICKETING_JWT_SECRET": JWT_SECRET}
    with serve(env, workers=2, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.mark.slow
def test_twenty_concurrent_retries_create_one_reservation(
    server: RunningServer, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=100)
    body = {"query": CREATE, "variables": {"input": {"eventId": event_id, "quantity": 2}}}
    headers = {**auth(), "Idempotency-Key": "9f1c2b7e-retry-storm"}

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            return await asyncio.gather(
                *(http.post("/graphql", json=body, headers=headers) for _ in range(20))
            )

    answers = asyncio.run(main())
    assert {response.status_code for response in answers} == {200}
    results = [response.json() for response in answers]
    assert all(result == results[0] for result in results)
    assert results[0]["data"]["createReservation"]["__typename"] == "ReservationPayload"
    assert reservations(engine) == 1
    assert invariant_violations(engine) == []


def test_a_retry_returns_the_first_answer_and_changes_nothing(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    first = create(client, event_id, 2, key="k1")
    reservation_id = first["reservation"]["id"]
    # The reservation changes afterwards; the retry still answers as the first time did.
    data(
        client,
        UPDATE,
        {"input": {"reservationId": reservation_id, "operation": "INCREASE", "quantity": 3}},
        headers=auth(),
    )
    before = snapshot(engine)
    assert create(client, event_id, 2, key="k1") == first
    assert snapshot(engine) == before


def test_updates_with_a_key_happen_once(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    reservation_id = create(client, event_id, 1)["reservation"]["id"]
    update = {
        "reservationId": reservation_id,
        "operation": "INCREASE",
        "quantity": 2,
        "idempotencyKey": "bump-1",
    }
    first = data(client, UPDATE, {"input": update}, headers=auth())["updateReservation"]
    again = data(client, UPDATE, {"input": update}, headers=auth())["updateReservation"]
    assert first == again
    assert first["reservation"]["quantity"] == 3
    assert first["event"]["ticketsAvailable"] == 7
    assert invariant_violations(engine) == []


def test_the_same_key_with_another_input_is_refused(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    reservation_id = create(client, event_id, 2, key="k2")["reservation"]["id"]
    before = snapshot(engine)
    refused = create(client, event_id, 3, key="k2")
    assert refused["__typename"] == "IdempotencyKeyReused"
    update = {
        "reservationId": reservation_id,
        "operation": "INCREASE",
        "quantity": 2,
        "idempotencyKey": "k2",
    }
    refused = data(client, UPDATE, {"input": update}, headers=auth())["updateReservation"]
    assert refused["__typename"] == "IdempotencyKeyReused"
    assert snapshot(engine) == before


def test_keys_belong_to_one_customer(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    alice = create(client, event_id, 2, key="shared")
    bob = create(client, event_id, 2, key="shared", who="bob")
    assert bob["__typename"] == "ReservationPayload"
    assert bob["reservation"]["id"] != alice["reservation"]["id"]
    assert reservations(engine) == 2


def test_the_input_field_wins_over_the_header(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    header = {"Idempotency-Key": "from-header"}
    by_header = create(client, event_id, 1, headers=header)
    assert create(client, event_id, 1, headers=header) == by_header
    by_field = create(client, event_id, 1, key="from-field", headers=header)
    assert by_field["reservation"]["id"] != by_header["reservation"]["id"]
    assert reservations(engine) == 2


def test_a_refusal_is_not_remembered(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=2)
    assert create(client, event_id, 3, key="k3")["__typename"] == "NotEnoughTickets"
    data(
        client,
        """mutation($id: ID!) { updateEvent(input: {eventId: $id, capacity: 5}) {
        __typename } }""",
        {"id": event_id},
        headers=ORGANIZER,
    )
    assert create(client, event_id, 3, key="k3")["__typename"] == "ReservationPayload"


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\tkey"])
def test_malformed_keys_are_bad_user_input(client: TestClient, engine: Engine, key: str) -> None:
    event_id = insert_event(engine)
    before = snapshot(engine)
    variables = {"input": {"eventId": event_id, "quantity": 1, "idempotencyKey": key}}
    body = gql(client, CREATE, variables, headers=auth())
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert snapshot(engine) == before


def test_expired_keys_are_purged_in_the_background(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO idempotency_key (customer_id, key, fingerprint, created_at) VALUES"
                " ('alice', 'old', 'f', now() - interval '25 hours'),"
                " ('alice', 'fresh', 'f', now() - interval '23 hours')"
            )
        )
    settings = make_settings(database_url, idempotency_purge_interval_s=0.05)
    with TestClient(create_app(settings)):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                keys = set(connection.scalars(sa.text("SELECT key FROM idempotency_key")))
            if keys == {"fresh"}:
                break
            time.sleep(0.05)
    assert keys == {"fresh"}
