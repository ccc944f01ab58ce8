"""Anonymous query answers are shared for a bounded time; signed-in clients see their own
changes at once; only successful queries are shared."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from tests.graphql_documents import RESERVE
from tests.helpers import auth, data, insert_event, make_settings
from ticketing.answer_cache import Answer, AnswerCache
from ticketing.api.ids import key_of
from ticketing.app import create_app

TTL_MS = 400
AVAILABILITY = "{ events(first: 5) { edges { node { id ticketsAvailable } } } }"


@pytest.fixture
def cached(database_url: str, engine: Engine) -> Iterator[TestClient]:
    settings = make_settings(database_url, answer_cache_ttl_ms=TTL_MS)
    with TestClient(create_app(settings)) as made:
        yield made


def available(client: TestClient, headers: dict[str, str] | None = None) -> int:
    [edge] = data(client, AVAILABILITY, headers=headers)["events"]["edges"]
    return int(edge["node"]["ticketsAvailable"])


def sell_behind_the_service(engine: Engine, event_id: str, tickets: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE event SET tickets_available = tickets_available - :n WHERE id = :id"),
            {"n": tickets, "id": key_of(event_id, "Event")},
        )


def test_anonymous_answers_are_shared_but_never_older_than_the_ttl(
    cached: TestClient, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=10)
    asked = time.monotonic()
    assert available(cached) == 10
    sell_behind_the_service(engine, event_id, 3)
    if time.monotonic() - asked < TTL_MS / 1000 * 0.5:
        assert available(cached) == 10  # shared: not executed again
    time.sleep(TTL_MS / 1000)
    assert available(cached) == 7


def test_a_customer_sees_their_own_change_at_once(cached: TestClient, engine: Engine) -> None:
    event_id = insert_event(engine, capacity=10)
    assert available(cached) == 10
    reserved = data(
        cached, RESERVE, {"input": {"eventId": event_id, "quantity": 4}}, headers=auth("ann")
    )
    assert reserved["createReservation"]["__typename"] == "ReservationPayload"
    assert available(cached, auth("ann")) == 6


def test_each_shared_answer_carries_its_own_request_id(cached: TestClient, engine: Engine) -> None:
    insert_event(engine)
    ids = set()
    for _ in range(3):
        response = cached.post("/graphql", json={"query": AVAILABILITY})
        assert response.status_code == 200
        ids.add(response.headers["X-Request-ID"])
    assert len(ids) == 3


def test_answers_for_another_media_type_or_variables_are_kept_apart(
    cached: TestClient, engine: Engine
) -> None:
    insert_event(engine, capacity=10)
    query = "query($n: Int) { events(first: $n) { edges { node { ticketsAvailable } } } }"
    for variables, accept in [
        ({"n": 1}, "application/json"),
        ({"n": 1}, "application/graphql-response+json"),
        ({"n": 0}, "application/json"),
    ]:
        response = cached.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers={"Accept": accept},
        )
        assert response.headers["content-type"].startswith(accept)
        assert ("errors" in response.json()) == (variables["n"] == 0)


def answer(shareable: bool = True) -> Answer:
    return Answer(200, b"{}", {}, shareable=shareable)


class Execution:
    """A stand-in for executing a query, counting how often it runs."""

    def __init__(self, shareable: bool = True, delay_s: float = 0, first_fails: bool = False):
        self.result, self.delay_s, self.first_fails = answer(shareable), delay_s, first_fails
        self.count = 0

    async def __call__(self) -> Answer:
        self.count += 1
        number = self.count
        await asyncio.sleep(self.delay_s)
        if self.first_fails and number == 1:
            raise RuntimeError("the database went away")
        return self.result


async def many_at_once(cache: AnswerCache, execute: Execution, how_many: int) -> list[Any]:
    key = ("q", "", None, "json")
    return await asyncio.gather(
        *(cache.get(key, execute) for _ in range(how_many)), return_exceptions=True
    )


def test_concurrent_misses_execute_once() -> None:
    execute = Execution(delay_s=0.05)
    answers = asyncio.run(many_at_once(AnswerCache(ttl_s=10, max_entries=10), execute, 20))
    assert execute.count == 1
    assert all(given is answers[0] for given in answers)


def test_errors_and_mutations_are_not_shared() -> None:
    cache, execute = AnswerCache(ttl_s=10, max_entries=10), Execution(shareable=False)
    for _ in range(2):
        asyncio.run(many_at_once(cache, execute, 1))
    assert execute.count == 2


def test_a_failed_execution_lets_the_waiters_run_their_own() -> None:
    execute = Execution(delay_s=0.02, first_fails=True)
    outcomes = asyncio.run(many_at_once(AnswerCache(ttl_s=10, max_entries=10), execute, 3))
    assert isinstance(outcomes[0], RuntimeError)
    assert all(isinstance(outcome, Answer) for outcome in outcomes[1:])


def test_the_cache_is_bounded_and_expires() -> None:
    cache = AnswerCache(ttl_s=0.05, max_entries=2)
    executions: list[str] = []

    def executing(query: str) -> Callable[[], Awaitable[Answer]]:
        async def execute() -> Answer:
            executions.append(query)
            return answer()

        return execute

    async def scenario() -> None:
        for query in ["a", "b", "c", "a"]:  # "a" was evicted by "c"
            await cache.get((query, "", None, "json"), executing(query))
        await asyncio.sleep(0.06)
        await cache.get(("a", "", None, "json"), executing("a"))  # expired

    asyncio.run(scenario())
    assert executions == ["a", "b", "c", "a", "a"]
