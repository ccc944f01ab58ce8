"""Live updates over WebSocket (graphql-transport-ws): what a client sees, and who may see it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.graphql_documents import RESERVE_ID, mutation
from tests.helpers import (
    ORGANIZER,
    DatabaseClock,
    auth,
    data,
    gql,
    insert_event,
    sample,
    token,
)
from ticketing.api.context import Loaders
from ticketing.api.ids import key_of, to_global_id
from ticketing.app import create_app
from ticketing.db import Database, DatabaseUnavailable
from ticketing.live.hub import Hub
from ticketing.live.listener import Listener
from ticketing.settings import Settings

PROTOCOL = "graphql-transport-ws"
EVENT_CHANGED = (
    """subscription($id: ID!) { eventChanged(id: $id) { id ticketsAvailable status } }"""
)
MY_RESERVATIONS = """subscription { myReservationChanged { id quantity status customer } }"""


@contextmanager
def connected(
    client: TestClient, payload: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Iterator[Any]:
    with client.websocket_connect("/graphql", subprotocols=[PROTOCOL], headers=headers or {}) as ws:
        ws.send_json({"type": "connection_init", "payload": payload or {}})
        assert ws.receive_json() == {"type": "connection_ack"}
        yield ws


def subscribe(ws: Any, query: str, variables: dict[str, Any] | None = None, id: str = "1") -> None:
    ws.send_json(
        {"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}}
    )


def next_data(ws: Any) -> Any:
    message = ws.receive_json()
    assert message["type"] == "next", message
    assert "errors" not in message["payload"], message
    return message["payload"]["data"]


def reserve(client: TestClient, event_id: str, quantity: int, who: str = "alice") -> str:
    made = data(
        client,
        RESERVE_ID,
        {"input": {"eventId": event_id, "quantity": quantity}},
        headers=auth(who),
    )["createReservation"]
    reservation_id: str = made["reservation"]["id"]
    return reservation_id


def test_an_event_is_sent_now_and_after_each_change(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    with connected(client) as ws:
        subscribe(ws, EVENT_CHANGED, {"id": event_id})
        assert next_data(ws)["eventChanged"] == {
            "id": event_id,
            "ticketsAvailable": 10,
            "status": "ON_SALE",
        }
        reserve(client, event_id, 3)
        assert next_data(ws)["eventChanged"]["ticketsAvailable"] == 7


def test_a_burst_of_changes_ends_on_the_latest_value(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=50)
    with connected(client) as ws:
        subscribe(ws, EVENT_CHANGED, {"id": event_id})
        next_data(ws)
        for number in range(20):
            reserve(client, event_id, 1, f"fan-{number}")
        seen = []
        while not seen or seen[-1] != 30:
            seen.append(next_data(ws)["eventChanged"]["ticketsAvailable"])
        # Coalesced: fewer messages than changes, never going back.
        assert len(seen) <= 20
        assert seen == sorted(seen, reverse=True)


def test_my_reservations_are_mine_only(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    with connected(client, {"Authorization": f"Bearer {token('alice')}"}) as ws:
        subscribe(ws, MY_RESERVATIONS)
        reserve(client, event_id, 2, "bob")
        mine = reserve(client, event_id, 1, "alice")
        assert next_data(ws)["myReservationChanged"] == {
            "id": mine,
            "quantity": 1,
            "status": "ACTIVE",
            "customer": "alice",
        }


def test_the_upgrade_requests_header_signs_in_too(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    with connected(client, headers=auth("alice")) as ws:
        subscribe(ws, MY_RESERVATIONS)
        mine = reserve(client, event_id, 1, "alice")
        assert next_data(ws)["myReservationChanged"]["id"] == mine


@pytest.mark.parametrize(
    "payload",
    [{"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}, {"Authorization": 5}],
)
def test_a_bad_token_closes_the_connection(client: TestClient, payload: dict[str, Any]) -> None:
    with client.websocket_connect("/graphql", subprotocols=[PROTOCOL]) as ws:
        ws.send_json({"type": "connection_init", "payload": payload})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4403


def test_anonymous_clients_may_not_watch_reservations(client: TestClient) -> None:
    with connected(client) as ws:
        subscribe(ws, MY_RESERVATIONS)
        message = ws.receive_json()
    assert message["type"] in ("error", "next")
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("event_id", ["nonsense", to_global_id("Event", 999), to_global_id("X", 1)])
def test_an_unknown_event_ends_the_subscription_with_an_error(
    client: TestClient, event_id: str
) -> None:
    with connected(client) as ws:
        subscribe(ws, EVENT_CHANGED, {"id": event_id})
        message = ws.receive_json()
        errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
        assert errors[0]["extensions"]["code"] == "NOT_FOUND"
        if message["type"] == "next":
            assert ws.receive_json() == {"id": "1", "type": "complete"}


def test_watching_more_than_100_events_is_bad_input(client: TestClient, engine: Engine) -> None:
    ids = [to_global_id("Event", n) for n in range(1, 102)]
    with connected(client) as ws:
        subscribe(
            ws, "subscription($ids: [ID!]!) { eventsChanged(ids: $ids) { id } }", {"ids": ids}
        )
        message = ws.receive_json()
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"


def test_a_subscription_over_http_gets_a_clear_error(client: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine)
    body = gql(client, EVENT_CHANGED, {"id": event_id}, expect_status=400)
    assert "WebSocket" in body["errors"][0]["message"]
    assert json.dumps(body).count("Traceback") == 0


def test_subscription_documents_meet_the_same_limits(client: TestClient) -> None:
    nested = "id"
    for _ in range(Settings().max_query_depth):
        nested = f"event {{ reservations {{ edges {{ node {{ {nested} }} }} }} }}"
    with connected(client, {"Authorization": f"Bearer {token('alice')}"}) as ws:
        subscribe(ws, f"subscription {{ myReservationChanged {{ {nested} }} }}")
        message = ws.receive_json()
    assert message["type"] == "error", message
    assert message["payload"][0]["extensions"]["code"] == "QUERY_LIMIT_EXCEEDED"


def test_joining_the_waitlist_shows_in_the_events_length(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=1)
    reserve(client, event_id, 1, "holder")
    with connected(client) as ws:
        subscribe(
            ws,
            "subscription($id: ID!) { eventChanged(id: $id) { waitlistLength } }",
            {"id": event_id},
        )
        assert next_data(ws)["eventChanged"] == {"waitlistLength": 0}
        joined = data(
            client,
            mutation("joinWaitlist", "__typename"),
            {"input": {"eventId": event_id, "quantity": 1}},
            headers=auth("bob"),
        )
        assert joined["joinWaitlist"]["__typename"] == "WaitlistPayload"
        # The holder's reservation, made just before subscribing, may still be announced.
        lengths = [next_data(ws)["eventChanged"]["waitlistLength"]]
        if lengths[-1] == 0:
            lengths.append(next_data(ws)["eventChanged"]["waitlistLength"])
        assert lengths[-1] == 1


def test_a_hold_that_runs_out_is_told_to_its_customer(
    client: TestClient, engine: Engine, database_clock: DatabaseClock
) -> None:
    event_id = insert_event(engine, capacity=3, hold_minutes=1)
    with connected(client, {"Authorization": f"Bearer {token('alice')}"}) as ws:
        subscribe(ws, MY_RESERVATIONS)
        held = reserve(client, event_id, 2, "alice")
        assert next_data(ws)["myReservationChanged"]["status"] == "HELD"
        database_clock.advance(timedelta(minutes=1))
        # The sweeper releases it; its customer hears at once.
        expired = next_data(ws)["myReservationChanged"]
        assert (expired["id"], expired["status"]) == (held, "EXPIRED")


def messages(execution: str) -> float:
    return sample("ticketing_subscription_messages_total", execution=execution)


def test_subscribers_of_the_same_document_share_one_execution_per_change(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    with contextlib.ExitStack() as stack:
        watchers = [stack.enter_context(connected(client)) for _ in range(3)]
        watchers.append(stack.enter_context(connected(client, headers=auth("alice"))))
        for ws in watchers:
            subscribe(ws, EVENT_CHANGED, {"id": event_id})
            next_data(ws)  # each reads the event now on its own
        executed, shared = messages("executed"), messages("shared")
        reserve(client, event_id, 3)
        for ws in watchers:
            assert next_data(ws)["eventChanged"]["ticketsAvailable"] == 7
    # Signed in or not: these fields show everyone the same.
    assert (messages("executed") - executed, messages("shared") - shared) == (1, 3)


def test_what_depends_on_the_viewer_is_never_shared(client: TestClient, engine: Engine) -> None:
    """Whichever subscriber's execution comes first, the organizer sees the reservations and
    the others see null."""
    event_id = insert_event(engine, capacity=10)
    query = """subscription($id: ID!) {
        eventChanged(id: $id) { ticketsAvailable reservations { totalCount } } }"""
    viewers: list[dict[str, str]] = [{}, ORGANIZER, auth("alice"), {}, ORGANIZER]
    with contextlib.ExitStack() as stack:
        watchers = [stack.enter_context(connected(client, headers=who)) for who in viewers]
        for ws in watchers:
            subscribe(ws, query, {"id": event_id})
            next_data(ws)
        reserve(client, event_id, 2)
        seen = [next_data(ws)["eventChanged"] for ws in watchers]
    assert seen == [
        {"ticketsAvailable": 8, "reservations": {"totalCount": 1} if who is ORGANIZER else None}
        for who in viewers
    ]


# Two versions of an app: the same operation, a fragment that gained a field.
SAME_OPERATION = "subscription($id: ID!) { eventChanged(id: $id) { ...Shown } }\n"


def test_documents_that_differ_in_a_fragment_are_not_shared(
    client: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    old = SAME_OPERATION + "fragment Shown on Event { name }"
    new = SAME_OPERATION + "fragment Shown on Event { name ticketsAvailable }"
    with connected(client) as first, connected(client) as second:
        subscribe(first, old, {"id": event_id})
        assert next_data(first)["eventChanged"] == {"name": "Concert"}
        subscribe(second, new, {"id": event_id})
        assert next_data(second)["eventChanged"] == {"name": "Concert", "ticketsAvailable": 10}
        reserve(client, event_id, 3)
        assert next_data(first)["eventChanged"] == {"name": "Concert"}
        assert next_data(second)["eventChanged"] == {"name": "Concert", "ticketsAvailable": 7}


def test_a_root_field_in_a_fragment_gets_its_own_answer(client: TestClient, engine: Engine) -> None:
    """Both subscriptions get the same event object from the hub, through operations that
    read alike."""
    event_id = insert_event(engine, capacity=10)
    operation = "subscription { ...Root }\n"
    one = operation + f'fragment Root on Subscription {{ eventChanged(id: "{event_id}") {{ id }} }}'
    many = (
        operation
        + f'fragment Root on Subscription {{ eventsChanged(ids: ["{event_id}"]) {{ id }} }}'
    )
    with connected(client) as first, connected(client) as second:
        subscribe(first, one)
        next_data(first)
        subscribe(second, many)
        next_data(second)
        reserve(client, event_id, 1)
        assert next_data(first) == {"eventChanged": {"id": event_id}}
        assert next_data(second) == {"eventsChanged": {"id": event_id}}


def test_a_failed_execution_is_not_handed_to_the_other_subscribers(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database unavailable a moment while one subscriber's message executes: that one
    gets the error, and the other executes its own."""
    event_id = insert_event(engine, capacity=10)
    query = "subscription($id: ID!) { eventChanged(id: $id) { ticketsAvailable waitlistLength } }"
    count_waitlists = Loaders._count_waitlists
    failures = []

    async def once_unavailable(loaders: Loaders, event_ids: list[int]) -> list[int]:
        if failures:
            failures.pop()
            raise DatabaseUnavailable("deadline")
        return await count_waitlists(loaders, event_ids)

    monkeypatch.setattr(Loaders, "_count_waitlists", once_unavailable)
    with connected(client) as first, connected(client) as second:
        for ws in (first, second):
            subscribe(ws, query, {"id": event_id})
            next_data(ws)
        failures.append("next")
        reserve(client, event_id, 1)
        payloads = [ws.receive_json()["payload"] for ws in (first, second)]
    assert sorted("errors" in payload for payload in payloads) == [False, True]


def test_what_changes_before_the_process_first_listens_still_reaches_its_subscribers(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process takes subscriptions before its LISTEN connection is up (its first moments):
    once it listens, it reads again what they watch, as after a dropped connection."""
    event_key = key_of(insert_event(engine, capacity=10), "Event")
    assert event_key is not None
    may_connect = threading.Event()
    connect = Listener._connect

    def connect_when_allowed(self: Listener) -> Any:
        assert may_connect.wait(10)
        return connect(self)

    monkeypatch.setattr(Listener, "_connect", connect_when_allowed)

    def sell_four() -> None:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE event SET tickets_available = tickets_available - 4 WHERE id = :id"
                ),
                {"id": event_key},
            )

    async def watch() -> int:
        db = Database(engine, max_threads=2)
        hub = Hub(db)
        listener = Listener(database_url, hub, db, connect_timeout_s=5)
        hub.start()
        listener.start()
        try:
            async with hub.watching_events([event_key], lambda row: row, lambda: None) as mailbox:
                await asyncio.to_thread(sell_four)  # announced while nobody listens
                may_connect.set()
                seen = await asyncio.wait_for(mailbox.take(), timeout=5)
        finally:
            await listener.stop()
            await hub.stop()
        return int(seen.tickets_available)

    assert asyncio.run(watch()) == 6


def test_an_app_serves_once_it_has_tried_to_listen(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that a subscriber taken in a process's first moments hears every change."""
    connect = Listener._connect
    listening: list[bool] = []

    def slow_connect(self: Listener) -> Any:
        time.sleep(0.3)
        made = connect(self)
        listening.append(True)
        return made

    monkeypatch.setattr(Listener, "_connect", slow_connect)
    with TestClient(create_app(settings)):
        assert listening == [True]
