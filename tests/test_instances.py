"""Many instances, one database, for real: HAProxy -> two `ticketing serve` processes ->
PgBouncer in transaction pooling mode -> PostgreSQL, the stack that `make bench ARGS="--instances
2"` runs (bench/stack.py). A sale from many clients through the balancer keeps the invariant
and every reservation it acknowledged; what each process keeps for itself (persisted queries,
the hold sweep, the live-update listener) stays correct across instances; and the service's
connection settings hold through PgBouncer without outliving their transaction."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
import sqlalchemy as sa
import websockets
from sqlalchemy.engine import Engine
from websockets.typing import Subprotocol

from bench import dataset, stack
from bench.stack import Instance
from tests.helpers import JWT_SECRET, Databases, insert_event, invariant_violations, token
from ticketing.api.ids import key_of, to_global_id
from ticketing.db import create_db_engine

pytestmark = pytest.mark.slow

POOL_SIZE = 4  # PgBouncer's server connections: fewer than the instances' clients
RESERVE = """mutation Reserve($input: CreateReservationInput!) { createReservation(input: $input) {
    __typename ... on ReservationPayload { reservation { id quantity customer } } } }"""
SETTINGS = (
    "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
    " current_setting('TimeZone')"
)


@dataclass
class Deployed:
    stack: stack.Stack
    url: str  # PostgreSQL's database, directly
    direct: Engine
    work: Path

    def client(self, instance: Instance | None = None) -> httpx.AsyncClient:
        port = instance.port if instance else self.stack.port
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            limits=httpx.Limits(max_connections=100),
        )


@pytest.fixture(scope="module")
def deployed(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    # A new, empty database: the two instances migrate it at once, through PgBouncer.
    url = databases.create()
    work = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETING_")}
    env.pop("DATABASE_URL", None)
    env |= {"TICKETING_JWT_SECRET": JWT_SECRET, "TICKETING_LOG_LEVEL": "warning"}
    with stack.stack(url, env, work, instances=2, workers=1, pool_size=POOL_SIZE) as running:
        direct = create_db_engine(url)
        try:
            yield Deployed(running, url, direct, work)
        finally:
            direct.dispose()


def event_key(event: str) -> int:
    key = key_of(event, "Event")
    assert key is not None
    return key


def bearer(customer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(customer)}"}


def test_a_sale_from_many_clients_keeps_every_acknowledged_reservation(
    deployed: Deployed,
) -> None:
    """60 customers, each trying 3 times for 1 to 3 tickets (one of them sent twice at once
    with one idempotency key), on 150 tickets with a limit of 4 each: the event sells out,
    limits refuse, and every reservation acknowledged is there, and nothing else. A client
    told SERVICE_UNAVAILABLE (on a busy machine, a hot event's queue outlasting its bound)
    retries with its idempotency key until it has an answer."""
    capacity = 150
    event = insert_event(deployed.direct, capacity=capacity, max_tickets_per_customer=4)
    made: dict[str, tuple[str, int]] = {}  # reservation -> (customer, quantity), as answered
    outcomes: Counter[str] = Counter()
    served_by: Counter[str] = Counter()

    async def reserve(client: httpx.AsyncClient, customer: str, quantity: int, key: str) -> str:
        request = {
            "query": RESERVE,
            "variables": {"input": {"eventId": event, "quantity": quantity}},
        }
        headers = {**bearer(customer), "Idempotency-Key": key}
        for _ in range(20):
            response = await client.post("/graphql", json=request, headers=headers)
            served_by[response.headers[stack.SERVED_BY]] += 1
            if response.status_code != 503:
                break
            # Too busy (a hot event's queue is bounded in time): retry with the same key, as
            # clients are told to, which also settles a change that may have been made.
            assert response.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
            outcomes["retried"] += 1
            await asyncio.sleep(0.2)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        answer = body["data"]["createReservation"]
        outcomes[answer["__typename"]] += 1
        if answer["__typename"] != "ReservationPayload":
            assert answer["__typename"] in {"NotEnoughTickets", "CustomerLimitReached"}, answer
            return ""
        reservation = answer["reservation"]
        assert (reservation["customer"], reservation["quantity"]) == (customer, quantity)
        made[reservation["id"]] = (customer, quantity)
        return str(reservation["id"])

    async def customer(client: httpx.AsyncClient, number: int) -> None:
        who, chance = f"fan-{number}", random.Random(number)  # noqa: S311 - not a secret
        for attempt in range(3):
            quantity, key = chance.randint(1, 3), f"{who}-{attempt}"
            if attempt == 0:  # a retry racing its original: one reservation, one answer
                first, second = await asyncio.gather(
                    reserve(client, who, quantity, key), reserve(client, who, quantity, key)
                )
                assert first == second
            else:
                await reserve(client, who, quantity, key)

    async def sale() -> None:
        async with deployed.client() as client:
            await asyncio.gather(*(customer(client, number) for number in range(60)))

    asyncio.run(sale())

    assert set(served_by) == {"instance1", "instance2"}, served_by
    assert outcomes["ReservationPayload"] > 0
    assert outcomes["NotEnoughTickets"] > 0, outcomes  # sold out: 60 x 4 wanted, 150 on sale
    assert invariant_violations(deployed.direct) == []
    with deployed.direct.connect() as connection:
        stored = {
            to_global_id("Reservation", key): (customer, quantity)
            for key, customer, quantity in connection.execute(
                sa.text(
                    "SELECT id, customer_id, quantity FROM reservation"
                    " WHERE event_id = :event AND status = 'ACTIVE'"
                ),
                {"event": event_key(event)},
            )
        }
        available = connection.scalar(
            sa.text("SELECT tickets_available FROM event WHERE id = :event"),
            {"event": event_key(event)},
        )
    # Every acknowledged reservation is stored as answered, and every request was answered.
    assert stored == made
    assert available == capacity - sum(quantity for _, quantity in made.values())

    # It all went through PgBouncer's transaction pool: its few server connections served
    # the instances' many client connections.
    pooler = deployed.stack.pooler
    assert {row["key"]: row["value"] for row in pooler.show("CONFIG")}["pool_mode"] == (
        "transaction"
    )
    database = str(deployed.direct.url.database)
    clients = [row for row in pooler.show("CLIENTS") if row["database"] == database]
    servers = [row for row in pooler.show("SERVERS") if row["database"] == database]
    assert 0 < len(servers) <= POOL_SIZE < len(clients)
    [stats] = [row for row in pooler.show("STATS") if row["database"] == database]
    assert int(str(stats["total_xact_count"])) > len(made)


def test_a_persisted_query_is_registered_on_each_instance_a_client_reaches(
    deployed: Deployed,
) -> None:
    """Each worker keeps its own persisted queries: a hash registered on one instance is
    unknown to the other, which answers PersistedQueryNotFound, and the client sends the
    query once more (Apollo's protocol) and has its answer. Never an error."""
    query = "query Browse { events(first: 3) { totalCount } }"
    sha = hashlib.sha256(query.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": sha}}

    async def ask(client: httpx.AsyncClient) -> list[tuple[str, str]]:
        """One operation as Apollo Client sends it: the hash alone, then with the query if
        the hash was unknown. Which instance answered each, and how."""
        answers = []
        for body in ({"extensions": extensions}, {"query": query, "extensions": extensions}):
            response = await client.post("/graphql", json=body)
            assert response.status_code == 200, response.text
            errors = response.json().get("errors")
            outcome = errors[0]["extensions"]["code"] if errors else "data"
            answers.append((response.headers.get(stack.SERVED_BY, "direct"), outcome))
            if outcome == "data":
                return answers
        raise AssertionError(f"still not answered after sending the query: {answers}")

    async def scenario() -> tuple[list[list[tuple[str, str]]], list[list[tuple[str, str]]]]:
        async with deployed.client() as balanced:
            before = [await ask(balanced) for _ in range(4)]
            for instance in deployed.stack.instances:  # each registers it for itself
                async with deployed.client(instance) as direct:
                    await ask(direct)
            after = [await ask(balanced) for _ in range(4)]
        return before, after

    before, after = asyncio.run(scenario())
    misses = [answer for operation in before for answer in operation if answer[1] != "data"]
    assert {outcome for _, outcome in misses} <= {"PERSISTED_QUERY_NOT_FOUND"}, before
    assert misses, before  # the first hash alone is unknown wherever it lands
    # Known to every instance now: the hash alone is answered, whichever instance gets it.
    assert all(len(operation) == 1 for operation in after), after
    assert {instance for [(instance, _)] in after} == {"instance1", "instance2"}


def test_holds_expire_once_while_every_instance_sweeps(deployed: Deployed) -> None:
    """Each process sweeps expired holds (locking the due events, skipping locked ones):
    across instances every hold still expires once, with one EXPIRED line, in time."""
    event = event_key(insert_event(deployed.direct, capacity=1000, hold_minutes=10))
    expires_at = dataset.add_expiring_holds(
        deployed.direct, [event], 200, lead=timedelta(seconds=0.5)
    )
    deadline = time.monotonic() + 10
    with deployed.direct.connect() as connection:
        while connection.scalar(
            sa.text("SELECT count(*) FROM reservation WHERE event_id = :e AND status = 'HELD'"),
            {"e": event},
        ):
            assert time.monotonic() < deadline, "holds still HELD 10 s after running out"
            time.sleep(0.1)
            connection.rollback()
        wrong = connection.scalar(
            sa.text(
                "SELECT count(*) FROM reservation r WHERE event_id = :e AND (status <> 'EXPIRED'"
                " OR (SELECT count(*) FROM reservation_change c WHERE c.reservation_id = r.id"
                " AND c.kind = 'EXPIRED') <> 1)"
            ),
            {"e": event},
        )
        now = connection.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    assert wrong == 0
    assert now - expires_at < timedelta(seconds=5)
    assert invariant_violations(deployed.direct) == []


def test_a_change_made_on_one_instance_reaches_a_subscriber_of_the_other(
    deployed: Deployed,
) -> None:
    """Each worker LISTENs on a direct connection (TICKETING_LISTEN_DATABASE_URL), as LISTEN
    can't go through transaction pooling: a subscriber connected through the balancer hears
    of a reservation made on the other instance."""
    event = insert_event(deployed.direct, capacity=50)

    async def scenario() -> list[int]:
        url = f"ws://127.0.0.1:{deployed.stack.port}/graphql"
        async with websockets.connect(
            url, subprotocols=[Subprotocol("graphql-transport-ws")]
        ) as ws:
            assert ws.response is not None
            subscribed_on = ws.response.headers[stack.SERVED_BY]
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await ws.recv()) == {"type": "connection_ack"}
            query = "subscription($id: ID!) { eventChanged(id: $id) { ticketsAvailable } }"
            subscribe = {"query": query, "variables": {"id": event}}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
            seen = [await _available(ws)]
            [other] = [i for i in deployed.stack.instances if i.name != subscribed_on]
            async with deployed.client(other) as client:
                response = await client.post(
                    "/graphql",
                    json={
                        "query": RESERVE,
                        "variables": {"input": {"eventId": event, "quantity": 3}},
                    },
                    headers=bearer("listener-fan"),
                )
                assert response.json()["data"]["createReservation"]["__typename"] == (
                    "ReservationPayload"
                )
            async with asyncio.timeout(5):
                while seen[-1] != 47:
                    seen.append(await _available(ws))
            return seen

    seen = asyncio.run(scenario())
    assert seen[0] == 50
    assert seen[-1] == 47


async def _available(ws: Any) -> int:
    message = json.loads(await ws.recv())
    assert message["type"] == "next", message
    return int(message["payload"]["data"]["eventChanged"]["ticketsAvailable"])


def test_a_locked_event_row_is_waited_for_by_the_lock_timeout_through_pgbouncer(
    deployed: Deployed,
) -> None:
    """The lock timeout (TICKETING_DB_LOCK_TIMEOUT_MS, 1 s) holds through PgBouncer: a
    reservation behind a row someone holds gives up after it, well before the 3 s deadline,
    and says so (SERVICE_UNAVAILABLE, nothing done)."""
    event = insert_event(deployed.direct, capacity=5)
    with deployed.direct.begin() as holder:
        holder.execute(
            sa.text("SELECT 1 FROM event WHERE id = :id FOR UPDATE"), {"id": event_key(event)}
        )
        started = time.monotonic()
        response = httpx.post(
            f"http://127.0.0.1:{deployed.stack.port}/graphql",
            json={"query": RESERVE, "variables": {"input": {"eventId": event, "quantity": 1}}},
            headers=bearer("patient-fan"),
            timeout=30,
        )
        waited = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert 0.9 < waited < 2.5
    assert invariant_violations(deployed.direct) == []


def test_connection_settings_hold_through_pgbouncer_and_end_with_their_transaction(
    deployed: Deployed,
) -> None:
    """The service connects through Debian's PgBouncer (which refuses the startup parameter
    `options`), has its timeouts and UTC in every transaction, and leaves nothing behind on
    the server connection, which PgBouncer gives the next client (one connection here)."""
    with stack.pgbouncer(deployed.url, deployed.work / "one", pool_size=1) as pooler:
        for autocommit in (False, True):
            engine = create_db_engine(
                pooler.url, statement_timeout_ms=4000, lock_timeout_ms=700, autocommit=autocommit
            )
            try:
                with engine.connect() as connection:
                    assert connection.execute(sa.text(SETTINGS)).one() == ("4s", "700ms", "UTC")
                    connection.commit()
            finally:
                engine.dispose()
            other = psycopg2.connect(pooler.url.replace("+psycopg2", ""))
            try:
                with other.cursor() as cursor:
                    cursor.execute("SELECT current_setting('lock_timeout')")
                    assert cursor.fetchone() == ("0",)
            finally:
                other.close()
        print(pooler.show("SERVERS"), pooler.show("POOLS"), pooler.process.output())


def test_a_listener_behind_transaction_pooling_says_it_hears_nothing(deployed: Deployed) -> None:
    """LISTEN through a transaction-pooling PgBouncer succeeds and then hears nothing: an
    instance left with TICKETING_LISTEN_DATABASE_URL unset there says so, in an error, instead
    of leaving its subscribers without changes in silence. The stack's instances, which listen
    directly, hear their checks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETING_")}
    env |= {
        "DATABASE_URL": deployed.stack.pooler.url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_LOG_LEVEL": "warning",
    }
    with stack.serving(env, deployed.work, count=1, workers=1, name="deaf") as [deaf]:
        deadline = time.monotonic() + 20
        while "heard nothing" not in deaf.process.output():
            assert time.monotonic() < deadline, deaf.process.output()
            time.sleep(0.2)
    assert "TICKETING_LISTEN_DATABASE_URL" in deaf.process.output()
    for instance in deployed.stack.instances:
        assert "heard nothing" not in instance.process.output()
