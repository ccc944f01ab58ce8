"""Many clients against a real server process: the invariant, the per-customer limit and every
acknowledged change must hold exactly."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.graphql_documents import change_tickets, on_reservation, reserve_tickets
from tests.helpers import (
    JWT_SECRET,
    ORGANIZER,
    auth,
    insert_event,
    invariant_violations,
    lock_event_row,
)
from tests.servers import RunningServer, client_limits, serve
from ticketing.api.ids import key_of

# Starts server processes or external tools: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

CLIENTS = 60
CUSTOMERS = 20  # three clients share each customer, so they race on the customer's limit
ROUNDS = 8
CAPACITY = 40
LIMIT = 4

RESULT = """__typename
    ... on ReservationPayload { reservation { id quantity status } event { ticketsAvailable } }"""
OPERATIONS = {
    "create": reserve_tickets(RESULT),
    "increase": change_tickets("INCREASE", RESULT),
    "decrease": change_tickets("DECREASE", RESULT),
    "cancel": on_reservation("cancelReservation", RESULT),
}
EXPECTED_REFUSALS = {
    "NotEnoughTickets",
    "CustomerLimitReached",
    "InvalidQuantity",
    "ReservationCancelled",
}


@dataclass
class Outcome:
    reservation_id: str | None
    operation: str
    typename: str
    quantity: int | None = None
    status: str | None = None


@dataclass
class Client:
    index: int
    customer: str
    outcomes: list[Outcome] = field(default_factory=list)
    mine: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        # About correctness, not latency: on a busy machine 30 requests per worker queued on
        # one event can wait longer than the default deadline, and would get 503s.
        "TICKETING_DB_DEADLINE_MS": "30000",
    }
    with serve(env, workers=2, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


async def run_client(http: httpx.AsyncClient, client: Client, event_id: str) -> None:
    chance = random.Random(client.index)  # noqa: S311 - reproducible load, not security
    headers = auth(client.customer)
    for _ in range(ROUNDS):
        choice = (
            "create"
            if not client.mine
            else chance.choice(["create", "increase", "increase", "decrease", "cancel"])
        )
        target = None if choice == "create" else chance.choice(client.mine)
        variables: dict[str, Any] = {"n": chance.randint(1, 3)}
        if choice == "create":
            variables["eventId"] = event_id
        else:
            variables["id"] = target
            if choice == "cancel":
                del variables["n"]
        response = await http.post(
            "/graphql",
            json={"query": OPERATIONS[choice], "variables": variables},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        result = next(iter(body["data"].values()))
        typename = result["__typename"]
        if typename == "ReservationPayload":
            reservation = result["reservation"]
            if choice == "create":
                client.mine.append(reservation["id"])
            client.outcomes.append(
                Outcome(
                    reservation["id"],
                    choice,
                    typename,
                    reservation["quantity"],
                    reservation["status"],
                )
            )
        else:
            assert typename in EXPECTED_REFUSALS, result
            client.outcomes.append(Outcome(target, choice, typename))


CHANGE_CAPACITY = """mutation($id: ID!, $capacity: Int!) {
    updateEvent(input: {eventId: $id, capacity: $capacity}) { __typename } }"""


async def run_organizer(http: httpx.AsyncClient, event_id: str) -> Counter[str]:
    """Moves the capacity up and down while the customers book."""
    chance = random.Random(-1)  # noqa: S311 - reproducible load, not security
    answers: Counter[str] = Counter()
    for _ in range(ROUNDS * 2):
        variables = {"id": event_id, "capacity": chance.randint(CAPACITY - 10, CAPACITY + 10)}
        response = await http.post(
            "/graphql",
            json={"query": CHANGE_CAPACITY, "variables": variables},
            headers=ORGANIZER,
        )
        assert response.status_code == 200, response.text
        answers[response.json()["data"]["updateEvent"]["__typename"]] += 1
    return answers


def test_many_clients_never_oversell_or_lose_a_change(
    server: RunningServer, engine: Engine
) -> None:
    event_id = insert_event(engine, capacity=CAPACITY, max_tickets_per_customer=LIMIT)
    clients = [Client(i, f"customer-{i % CUSTOMERS}") for i in range(CLIENTS)]

    async def main() -> Counter[str]:
        limits = client_limits(CLIENTS + 1)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            organizer, *_ = await asyncio.gather(
                run_organizer(http, event_id),
                *(run_client(http, client, event_id) for client in clients),
            )
        return organizer

    organizer_answers = asyncio.run(main())
    assert set(organizer_answers) <= {"EventPayload", "InvalidEvent"}
    # Reservations were decided together: some statements took more than one.
    exposed = httpx.get(f"{server.url}/metrics").text
    gathered = {
        line.split()[0]: float(line.split()[1])
        for line in exposed.splitlines()
        if line.startswith(("ticketing_batch_size_sum", "ticketing_batch_size_count"))
    }
    assert gathered["ticketing_batch_size_sum"] > gathered["ticketing_batch_size_count"] > 0
    assert organizer_answers["EventPayload"] > 0

    outcomes = [outcome for client in clients for outcome in client.outcomes]
    assert len(outcomes) == CLIENTS * ROUNDS  # every request got an answer
    kinds = Counter(outcome.typename for outcome in outcomes)
    # Demand exceeded supply: the test did exercise both refusals.
    assert kinds["NotEnoughTickets"] > 0
    assert kinds["CustomerLimitReached"] > 0
    assert kinds["ReservationPayload"] > CAPACITY // 3

    assert invariant_violations(engine) == []
    event_key = key_of(event_id, "Event")
    with engine.connect() as connection:
        held = dict(
            connection.execute(
                sa.text(
                    "SELECT customer_id, SUM(quantity) FROM reservation"
                    " WHERE event_id = :e AND status = 'ACTIVE' GROUP BY customer_id"
                ),
                {"e": event_key},
            ).all()
        )
        rows = {
            row.id: row
            for row in connection.execute(
                sa.text(
                    "SELECT r.id, r.quantity, r.status, count(c.id) AS changes FROM reservation r"
                    " JOIN reservation_change c ON c.reservation_id = r.id GROUP BY r.id"
                )
            )
        }
    assert max(held.values()) <= LIMIT

    # Every acknowledged change is in the database: the last answer for each reservation is
    # its state, and its history has one line per successful operation.
    successes: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.typename == "ReservationPayload" and outcome.reservation_id:
            successes[outcome.reservation_id].append(outcome)
    assert len(rows) == len(successes)
    for reservation_id, acknowledged in successes.items():
        row = rows[key_of(reservation_id, "Reservation")]
        last = acknowledged[-1]
        assert (row.quantity, row.status) == (last.quantity, last.status)
        # A repeated cancel returns the reservation unchanged and writes no history.
        cancelled = any(o.operation == "cancel" for o in acknowledged)
        changes = sum(o.operation != "cancel" for o in acknowledged) + cancelled
        assert row.changes == changes


def test_slow_database_work_does_not_block_other_requests(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """While one request waits on a locked row, /healthz and a query still answer at once."""
    event_id = insert_event(engine, capacity=5)
    env = {"DATABASE_URL": database_url, "TICKETING_JWT_SECRET": JWT_SECRET}
    with serve(env, workers=1, log_dir=tmp_path) as running:
        blocker = engine.connect()
        transaction = blocker.begin()
        lock_event_row(blocker, event_id)

        async def main() -> None:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
                slow = asyncio.create_task(
                    http.post(
                        "/graphql",
                        headers=auth(),
                        json={
                            "query": OPERATIONS["create"],
                            "variables": {"eventId": event_id, "n": 1},
                        },
                    )
                )
                await asyncio.sleep(0.5)
                assert not slow.done()
                health = await asyncio.wait_for(http.get("/healthz"), timeout=2)
                assert health.status_code == 200
                browse = await asyncio.wait_for(
                    http.post("/graphql", json={"query": "{ events { totalCount } }"}),
                    timeout=2,
                )
                assert browse.json() == {"data": {"events": {"totalCount": 1}}}
                assert not slow.done()
                transaction.commit()
                done = await asyncio.wait_for(slow, timeout=10)
                result = done.json()["data"]["createReservation"]
                assert result["__typename"] == "ReservationPayload"

        try:
            asyncio.run(main())
        finally:
            blocker.close()


FIRST_RESERVATIONS_AT_ONCE = """
import sys, threading
from ticketing.db import Database, create_db_engine
from ticketing.domain import booking
from ticketing.domain.actors import Actor

engine = create_db_engine(sys.argv[1], pool_size=40)
db = Database(engine, max_threads=40)
start = threading.Barrier(40)
failures = []

def reserve(number):
    start.wait()
    try:
        db.transaction(booking.reserve(
            event_id=int(sys.argv[2]), actor=Actor(f"first-{number}"), quantity=1))
    except Exception as error:
        failures.append(repr(error))

threads = [threading.Thread(target=reserve, args=(n,)) for n in range(40)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(failures)
sys.exit(1 if failures else 0)
"""


def test_a_new_process_takes_many_first_reservations_at_once(
    database_url: str, engine: Engine
) -> None:
    """The reservation statement is built lazily; many threads using it for the first time
    at once once made SQLAlchemy render it wrong (1 process in 3 with 24 threads)."""
    event_id = key_of(insert_event(engine, capacity=1000), "Event")
    for _ in range(6):
        ran = subprocess.run(
            [sys.executable, "-c", FIRST_RESERVATIONS_AT_ONCE, database_url, str(event_id)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
    assert invariant_violations(engine) == []
