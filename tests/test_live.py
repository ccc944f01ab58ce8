"""Live updates against real server processes, with a real WebSocket client (the `websockets`
package speaking graphql-transport-ws): across processes, at a thousand subscribers, across a
PostgreSQL restart, and who may see what."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pgserver
import psutil
import pytest
import websockets
from sqlalchemy.engine import Engine
from websockets.asyncio.client import ClientConnection

from tests.graphql_documents import reserve_tickets
from tests.helpers import JWT_SECRET, auth, insert_event, token
from tests.servers import RunningServer, client_limits, serve
from ticketing.auth import mint_token
from ticketing.db import create_db_engine
from ticketing.live.listener import MAX_BACKOFF_S
from ticketing.live.mailbox import STUCK_AFTER_S

# Starts server processes: `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

PROTOCOL = "graphql-transport-ws"
EVENT_CHANGED = "subscription($id: ID!) { eventChanged(id: $id) { id ticketsAvailable } }"
MY_RESERVATIONS = "subscription { myReservationChanged { id quantity status customer } }"
RESERVE = reserve_tickets(
    "__typename ... on ReservationPayload { reservation { id } event { ticketsAvailable } }"
)


def server_env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "TICKETING_JWT_SECRET": JWT_SECRET,
        "TICKETING_ANSWER_CACHE_TTL_MS": "0",
    }


@pytest.fixture(scope="module")
def two_servers(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two server processes on one database."""
    logs = tmp_path_factory.mktemp("live-logs")
    env = server_env(database_url)
    with serve(env, log_dir=logs) as first, serve(env, log_dir=logs) as second:
        yield first, second


def ws_url(server: RunningServer) -> str:
    return server.url.replace("http://", "ws://") + "/graphql"


async def connect(
    server: RunningServer, payload: dict[str, Any] | None = None, **options: Any
) -> ClientConnection:
    """A connection past `connection_ack`."""
    ws = await websockets.connect(ws_url(server), subprotocols=[PROTOCOL], **options)
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    assert json.loads(await ws.recv()) == {"type": "connection_ack"}
    return ws


async def subscribe(
    ws: ClientConnection, query: str, variables: dict[str, Any] | None = None, id: str = "1"
) -> None:
    message = {"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}}
    await ws.send(json.dumps(message))


def signed_in(customer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(customer)}"}


@dataclass
class Watcher:
    """One subscription's messages, each with when it arrived."""

    ws: ClientConnection
    seen: list[tuple[float, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> Watcher:
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            [value] = message["payload"]["data"].values()
            self.seen.append((time.monotonic(), value))
            self.arrived.set()

    def latest(self) -> Any:
        return self.seen[-1][1] if self.seen else None

    async def first(self, condition: Callable[[Any], bool], within_s: float) -> float:
        """When the first message that meets `condition` arrived."""
        deadline = time.monotonic() + within_s
        while True:
            for arrived, value in self.seen:
                if condition(value):
                    return arrived
            if self.task is not None and self.task.done():
                self.task.result()  # its failure, if any
                raise AssertionError(f"the connection ended; seen: {self.seen[-3:]}")
            left = deadline - time.monotonic()
            assert left > 0, f"no such message within {within_s} s; latest: {self.latest()}"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def watch_event(server: RunningServer, event_id: str, **options: Any) -> Watcher:
    ws = await connect(server, **options)
    await subscribe(ws, EVENT_CHANGED, {"id": event_id})
    return Watcher(ws).start()


async def reserve(http: httpx.AsyncClient, event_id: str, customer: str, n: int = 1) -> Any:
    response = await http.post(
        "/graphql",
        json={"query": RESERVE, "variables": {"eventId": event_id, "n": n}},
        headers=auth(customer),
    )
    assert response.status_code == 200, response.text
    made = response.json()["data"]["createReservation"]
    assert made["__typename"] == "ReservationPayload", made
    return made


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def test_a_change_through_one_process_reaches_a_subscriber_of_another_at_once(
    two_servers: tuple[RunningServer, RunningServer], engine: Engine
) -> None:
    watched, changed_through = two_servers
    capacity = 200
    event_id = insert_event(engine, capacity=capacity)

    async def main() -> list[float]:
        watcher = await watch_event(watched, event_id)
        await watcher.first(lambda event: event["ticketsAvailable"] == capacity, 5)
        delays = []
        async with httpx.AsyncClient(base_url=changed_through.url, timeout=10) as http:
            for number in range(100):
                made = await reserve(http, event_id, f"fan-{number}")
                answered = time.monotonic()
                left = made["event"]["ticketsAvailable"]
                assert left == capacity - number - 1
                # That change, or a later one: none is made before this one is seen.
                arrived = await watcher.first(
                    lambda event, left=left: event["ticketsAvailable"] <= left, 5
                )
                delays.append(max(0.0, arrived - answered))
        await watcher.close()
        return delays

    delays = asyncio.run(main())
    p50, p99 = statistics.median(delays), percentile(delays, 0.99)
    print(
        f"mutation answer (process B) to subscriber message (process A), 100 changes:"
        f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
    )
    assert p99 < 0.3


SUBSCRIBERS = 1000
BURST = 500


def stuck_socket() -> socket.socket:
    """A socket for a client that will stop reading: with a small receive buffer, the
    server's sends to it back up after a few kilobytes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def stop_reading(server: RunningServer) -> tuple[ClientConnection, int]:
    """A connection that reads nothing more at the TCP level after `connection_ack`, and its
    local port."""
    sock = stuck_socket()
    host, port = server.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    ws = await connect(server, sock=sock, compression=None)
    ws.transport.pause_reading()
    return ws, sock.getsockname()[1]


def test_messages_are_not_compressed_unless_configured(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    """The client asks for permessage-deflate, as browsers do; the server declines (see
    TICKETING_WEBSOCKET_COMPRESSION)."""

    async def main() -> str | None:
        ws = await connect(two_servers[0], compression="deflate")
        await ws.close()
        assert ws.request is not None
        assert ws.response is not None
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        return ws.response.headers.get("Sec-WebSocket-Extensions")

    assert asyncio.run(main()) is None


def test_a_thousand_subscribers_cost_bounded_memory_and_all_end_on_the_final_value(
    two_servers: tuple[RunningServer, RunningServer], engine: Engine
) -> None:
    """1,000 WebSocket connections, one subscription each, on one process, beside a client
    that stopped reading. The burst goes through the other process: through the same one it
    competes for the CPU with the fan-out (about 0.1 ms of CPU per message sent)."""
    server, other = two_servers
    event_id = insert_event(engine, capacity=BURST * 2)
    process = psutil.Process(server.process.pid)

    async def main() -> tuple[int, int, list[float]]:
        # One subscriber first, so that what every connection shares (code paths, pools,
        # caches) is in place before measuring.
        first = await watch_event(server, event_id)
        await first.first(lambda event: True, 5)
        before = process.memory_info().rss
        stuck, _ = await stop_reading(server)
        await subscribe(stuck, EVENT_CHANGED, {"id": event_id})
        opening = asyncio.Semaphore(50)

        async def one() -> Watcher:
            async with opening:
                return await watch_event(server, event_id)

        watchers = [first, *await asyncio.gather(*(one() for _ in range(SUBSCRIBERS - 1)))]
        await asyncio.gather(*(w.first(lambda event: True, 20) for w in watchers))
        after = process.memory_info().rss

        final = BURST
        async with httpx.AsyncClient(
            base_url=other.url, timeout=30, limits=client_limits(20)
        ) as http:
            turns = asyncio.Semaphore(20)

            async def one_reservation(number: int) -> None:
                async with turns:
                    await reserve(http, event_id, f"burst-{number}")

            await asyncio.gather(*(one_reservation(number) for number in range(BURST)))
        burst_done = time.monotonic()
        arrivals = await asyncio.gather(
            *(w.first(lambda event: event["ticketsAvailable"] == final, 10) for w in watchers)
        )
        await asyncio.sleep(0.3)  # nothing after the final value
        assert {w.latest()["ticketsAvailable"] for w in watchers} == {final}
        most = max(len(w.seen) for w in watchers)
        await asyncio.gather(*(w.close() for w in watchers))
        stuck.transport.abort()
        return before, after, [arrived - burst_done for arrived in arrivals], most

    before, after, lags, most = asyncio.run(main())
    per_subscriber = (after - before) / SUBSCRIBERS
    print(
        f"{SUBSCRIBERS} subscribers (one connection each): server RSS {before / 2**20:.1f} MiB"
        f" -> {after / 2**20:.1f} MiB, {per_subscriber / 1024:.1f} KiB per subscriber;"
        f" final value after the burst of {BURST}: p50 {statistics.median(lags) * 1000:.0f} ms,"
        f" max {max(lags) * 1000:.0f} ms; at most {most} messages per subscriber"
    )
    # Measured about 60 KiB (100 KiB with permessage-deflate, which is off by default).
    assert per_subscriber < 100 * 1024
    assert max(lags) < 3


EVENTS_CHANGED = "subscription($ids: [ID!]!) { eventsChanged(ids: $ids) { id ticketsAvailable } }"


def test_a_client_that_stops_reading_is_dropped_without_slowing_the_others(
    two_servers: tuple[RunningServer, RunningServer], engine: Engine
) -> None:
    server, other = two_servers
    events = [insert_event(engine, capacity=1000) for _ in range(100)]
    hot = events[0]
    process = psutil.Process(server.process.pid)

    def open_to(port: int) -> bool:
        return any(
            c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
            for c in process.net_connections("tcp")
        )

    async def main() -> tuple[list[float], float | None]:
        watchers = [await watch_event(server, hot) for _ in range(20)]
        for watcher in watchers:
            await watcher.first(lambda event: True, 5)
        # 100 subscriptions to 100 events each: 10,000 first values, far more than the
        # socket buffers hold, so its operations wait to send.
        stuck, stuck_port = await stop_reading(server)
        for number in range(100):
            await subscribe(stuck, EVENTS_CHANGED, {"ids": events}, id=str(number))
        delays: list[float] = []
        dropped_after = None
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=other.url, timeout=10) as http:
            for number in range(1000):
                made = await reserve(http, hot, f"steady-{number}")
                answered = time.monotonic()
                left = made["event"]["ticketsAvailable"]
                arrivals = await asyncio.gather(
                    *(
                        w.first(lambda e, left=left: e["ticketsAvailable"] <= left, 5)
                        for w in watchers
                    )
                )
                delays.extend(max(0.0, arrived - answered) for arrived in arrivals)
                if not open_to(stuck_port):
                    dropped_after = time.monotonic() - started
                    break
                if time.monotonic() - started > STUCK_AFTER_S + 10:
                    break
        await asyncio.gather(*(w.close() for w in watchers))
        stuck.transport.abort()
        return delays, dropped_after

    delays, dropped_after = asyncio.run(main())
    p50, p99 = statistics.median(delays), percentile(delays, 0.99)
    print(
        f"beside a client that stopped reading: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        f" over {len(delays)} deliveries; the stopped client dropped after {dropped_after} s"
    )
    # Held back by the stopped client, the others would wait until it is dropped, after
    # STUCK_AFTER_S (10 s); about 0.1 s when the machine is quiet, 1.6 s was seen with both CI
    # passes and a benchmark running beside them.
    assert p99 < 3.0
    assert dropped_after is not None
    assert dropped_after < STUCK_AFTER_S + 5
    assert "Traceback" not in server.output()


def test_a_bad_token_is_refused_and_no_one_sees_another_customers_reservations(
    two_servers: tuple[RunningServer, RunningServer], engine: Engine
) -> None:
    server, other = two_servers
    event_id = insert_event(engine, capacity=100)
    expired = mint_token(JWT_SECRET, "alice", ttl=timedelta(minutes=-1))
    forged = mint_token(
        "another-secret-that-is-long-enough-0123456789", "alice", ttl=timedelta(hours=1)
    )
    bad = [f"Bearer {expired}", f"Bearer {forged}", "Bearer not-a-token", "Basic YWxpY2U6"]

    async def refused(payload: dict[str, Any], headers: dict[str, str]) -> int | None:
        ws = await websockets.connect(
            ws_url(server), subprotocols=[PROTOCOL], additional_headers=headers
        )
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        return ws.close_code

    async def main() -> tuple[list[int | None], dict[str, Watcher], dict[str, set[str]]]:
        codes = [await refused({"Authorization": given}, {}) for given in bad]
        codes += [await refused({}, {"Authorization": given}) for given in bad]
        watchers = {}
        for customer in ("alice", "bob", "carol"):
            ws = await connect(server, signed_in(customer))
            await subscribe(ws, MY_RESERVATIONS)
            watchers[customer] = Watcher(ws).start()
        made: dict[str, set[str]] = {"alice": set(), "bob": set(), "carol": set()}
        async with httpx.AsyncClient(base_url=other.url, timeout=10) as http:
            for number in range(10):  # interleaved: alice, bob, alice, bob...
                customer = ("alice", "bob")[number % 2]
                reservation = (await reserve(http, event_id, customer))["reservation"]
                made[customer].add(reservation["id"])
        for customer in ("alice", "bob"):
            await watchers[customer].first(
                lambda _, c=customer: {v["id"] for _, v in watchers[c].seen} >= made[c], 5
            )
        await asyncio.sleep(0.3)  # time for anything misdirected to arrive
        for watcher in watchers.values():
            await watcher.close()
        return codes, watchers, made

    codes, watchers, made = asyncio.run(main())
    assert codes == [4403] * 2 * len(bad)
    for customer, watcher in watchers.items():
        seen = [value for _, value in watcher.seen]
        assert {value["customer"] for value in seen} <= {customer}
        assert {value["id"] for value in seen} == made[customer]
    assert watchers["carol"].seen == []
    response = httpx.post(
        f"{server.url}/graphql", json={"query": MY_RESERVATIONS}, headers=auth("alice")
    )
    assert response.status_code == 400
    assert "WebSocket" in response.json()["errors"][0]["message"]


def test_subscribers_get_the_current_value_soon_after_a_postgresql_restart(
    own_postgres: tuple[Any, str], tmp_path: Path
) -> None:
    pg, url = own_postgres
    engine = create_db_engine(url)
    event_id = insert_event(engine, capacity=100)
    pg_ctl = partial(pgserver.pg_ctl, pgdata=pg.pgdata, user=pg.system_user)
    longest_wait = f"retrying in {MAX_BACKOFF_S:.1f} s"

    with serve(server_env(url), log_dir=tmp_path) as server:

        async def main() -> tuple[list[tuple[Any, float]], float, float]:
            watchers = [await watch_event(server, event_id) for _ in range(3)]
            ws = await connect(server, signed_in("alice"))
            await subscribe(ws, MY_RESERVATIONS)
            mine = Watcher(ws).start()
            for watcher in watchers:
                await watcher.first(lambda event: event["ticketsAvailable"] == 100, 5)
            await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "stop"])
            answers: list[tuple[Any, float]] = []
            read = {
                "query": "query($id: ID!) { event(id: $id) { id } }",
                "variables": {"id": event_id},
            }
            limits = client_limits(4)
            async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as http:
                # Down until the listener waits its longest between attempts.
                down_by = time.monotonic() + 20
                while longest_wait not in server.output():
                    assert time.monotonic() < down_by, "the listener never backed off fully"
                    for request in (http.post("/graphql", json=read), http.get("/readyz")):
                        started = time.monotonic()
                        try:
                            status = (await request).status_code
                        except httpx.TransportError as error:
                            status = repr(error)
                        answers.append((status, time.monotonic() - started))
                    await asyncio.sleep(0.2)
                await asyncio.to_thread(pg.ensure_postgres_running)
                back = time.monotonic()
                # A change at once, while the listener may not be listening yet.
                while True:
                    response = await http.post(
                        "/graphql",
                        json={"query": RESERVE, "variables": {"eventId": event_id, "n": 2}},
                        headers=auth("alice"),
                    )
                    if response.status_code == 200:
                        break
                    await asyncio.sleep(0.05)
            arrivals = await asyncio.gather(
                *(w.first(lambda event: event["ticketsAvailable"] == 98, 10) for w in watchers),
                mine.first(lambda reservation: reservation["quantity"] == 2, 10),
            )
            # Still live after: a later change arrives as usual.
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                await reserve(http, event_id, "bob")
            await watchers[0].first(lambda event: event["ticketsAvailable"] == 97, 5)
            for watcher in [*watchers, mine]:
                await watcher.close()
            return answers, max(arrivals) - back, back

        answers, recovery, _ = asyncio.run(main())
        assert server.process.poll() is None  # the same process, never restarted
    engine.dispose()
    print(
        f"after PostgreSQL's return, subscribers had the current value in {recovery:.2f} s;"
        f" {len(answers)} requests during the outage, slowest {max(t for _, t in answers):.2f} s"
    )
    assert recovery < 5
    assert {status for status, _ in answers} <= {200, 503}, answers
    assert max(took for _, took in answers) < 3
