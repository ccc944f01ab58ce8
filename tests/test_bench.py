"""The benchmark's own parts, so that `make bench` doesn't rot between runs: its data keeps
the invariant (expiry storms included), its database ceiling sends the reservation path's SQL,
its GraphQL floor executes the document the my-reservations scenario sends, the hold
sale's script confirms each hold it makes, and its WebSocket subscribers receive a sale's
changes, each matched to the commit that made it."""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench import capacity, dataset, graphql_floor, live, reservation_sql
from bench.run import (
    BATCH_SIZE,
    DB_BATCH_CEILING_NAME,
    DB_CEILING_NAME,
    HOLD_SALE,
    HOT_SALE,
    LUA,
    MachineLoad,
    Measured,
    ReleaseWatch,
    Run,
    _capacity_figures,
    _require_wrk,
    _sleep_until,
    _wrk,
    pgbench_run,
)
from tests.graphql_documents import RESERVE
from tests.helpers import JWT_SECRET, ROOT, auth, gql, insert_event, invariant_violations
from tests.servers import serve
from ticketing.api.ids import key_of
from ticketing.db import Database
from ticketing.domain import expiry


# The benchmark's whole data set (1,001 events, 40,000 reservations and their history).
@pytest.mark.slow
def test_the_data_keeps_the_invariant(engine: Engine) -> None:
    dataset.load(engine)
    with engine.connect() as connection:
        events = connection.scalar(sa.text("SELECT count(*) FROM event"))
        reservations = connection.scalar(sa.text("SELECT count(*) FROM reservation"))
        hold_minutes = connection.scalar(
            sa.text("SELECT hold_minutes FROM event WHERE id = :id"), {"id": dataset.HOLD_EVENT}
        )
    assert (events, reservations) == (
        dataset.EVENTS + 1,
        dataset.CUSTOMERS * dataset.RESERVATIONS_EACH,
    )
    assert hold_minutes == dataset.HOLD_MINUTES
    assert invariant_violations(engine) == []


# The data set again, and waiting for its holds to run out.
@pytest.mark.slow
def test_a_storms_holds_keep_the_invariant_and_are_timed_until_all_are_released(
    engine: Engine,
) -> None:
    dataset.load(engine)
    events = [dataset.HOLD_EVENT, 2, 3]
    expires_at = dataset.add_expiring_holds(engine, events, 300, lead=timedelta(seconds=0.3))
    with engine.connect() as connection:
        holds = connection.execute(
            sa.text(
                "SELECT event_id, count(*), count(DISTINCT expires_at) FROM reservation"
                " WHERE status = 'HELD' GROUP BY event_id ORDER BY event_id"
            )
        ).all()
    assert holds == [(2, 100, 1), (3, 100, 1), (dataset.HOLD_EVENT, 100, 1)]
    assert invariant_violations(engine) == []
    db = Database(engine, max_threads=1)
    with ReleaseWatch(engine, expires_at) as watch:
        _sleep_until(expires_at + timedelta(seconds=0.2))
        while due := db.autocommit(lambda s: expiry.due_events(s, limit=100)):
            db.transaction(expiry.settle_due(due))
    assert 0.2 <= watch.released_after_s < ReleaseWatch.GIVE_UP_S
    assert invariant_violations(engine) == []


@pytest.mark.slow
def test_the_database_ceiling_runs_the_reservation_sql(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    dataset.load(engine)
    script = tmp_path / "reserve.sql"
    script.write_text(reservation_sql.pgbench_script(engine, event_id=1))
    assert "WITH taken AS (UPDATE event" in script.read_text()
    assert "SET LOCAL lock_timeout = 0 \\; " in script.read_text()  # one query with it
    run = pgbench_run(database_url, script, clients=4, seconds=1)
    assert run.errors == 0
    assert run.requests_per_s > 0
    with engine.connect() as connection:
        made = connection.scalar(
            sa.text("SELECT count(*) FROM reservation WHERE customer_id LIKE 'pgbench-%'")
        )
    assert made > 1  # the capture's own, and pgbench's
    assert invariant_violations(engine) == []


@pytest.mark.slow
def test_the_batched_database_ceiling_runs_the_gathered_reservation_sql(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    dataset.load(engine)
    script = tmp_path / "reserve_together.sql"
    script.write_text(reservation_sql.pgbench_batch_script(engine, event_id=1, size=4))
    # The lock, then the statement, in one query with the settings.
    assert "SET LOCAL timezone = 'UTC' \\; SELECT FROM event WHERE id = 1 FOR UPDATE \\; " in (
        script.read_text()
    )
    run = pgbench_run(database_url, script, clients=4, seconds=1)
    assert run.errors == 0
    assert run.requests_per_s > 0
    with engine.connect() as connection:
        made = connection.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT created_at), sum(quantity) FROM reservation"
                " WHERE customer_id LIKE 'pgbench-%'"
            )
        ).one()
    # Four in each statement: the capture's own of 3 tickets each, and pgbench's, of 1 and
    # 2 tickets a pair.
    assert made[0] == 4 * made[1] > 4
    assert made[2] == 4 * 3 + (made[1] - 1) * 2 * 3
    assert invariant_violations(engine) == []


def test_the_graphql_floor_executes_the_my_reservations_document() -> None:
    # It raises if the document fails against the schema's types.
    with MachineLoad() as load:
        floor = graphql_floor.measure(LUA / "my_reservations.json", seconds=0.2)
    assert floor.executions_per_cpu_s > 0
    assert 0 < floor.p50_ms <= floor.p99_ms
    assert 0 < load.busy <= 1


def test_the_database_cpu_counts_backends_that_ended_meanwhile(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MachineLoad, "database_root", None)
    MachineLoad.watch(engine)
    assert MachineLoad.database_root is not None
    busy = "SELECT count(*) FROM generate_series(1, 3000000)"  # about 0.2 s of a backend
    with MachineLoad() as load:
        ended = sa.create_engine(engine.url, poolclass=sa.NullPool)
        with ended.connect() as connection:
            connection.execute(sa.text(busy))
        ended.dispose()
    assert load.database_cpu_s is not None
    assert load.database_cpu_s > 0.1
    with MachineLoad() as idle:
        time.sleep(0.2)
    assert idle.database_cpu_s is not None
    assert idle.database_cpu_s < 0.1


class FakeSale(BaseHTTPRequestHandler):
    """Answers the hold sale's requests as the service would: a hold for the token's fan, and
    ACTIVE for a confirmation of a hold by its own fan (else NotFound)."""

    owners: ClassVar[dict[str, str]] = {}
    made = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        token = self.headers["Authorization"].removeprefix("Bearer ")
        given = body["variables"]["input"]
        with self.lock:
            if "createReservation" in body["query"]:
                FakeSale.made += 1
                hold = f"hold-{FakeSale.made}"
                self.owners[hold] = token
                reservation = {"id": hold, "customer": f"bench-fan-{token.split('-')[1]}"}
                result = {"__typename": "ReservationPayload", "reservation": reservation}
                answer = {"createReservation": result}
            elif self.owners.pop(given["reservationId"], None) == token:
                answer = {
                    "confirmReservation": {
                        "__typename": "ReservationPayload",
                        "reservation": {"status": "ACTIVE"},
                    }
                }
            else:
                answer = {"confirmReservation": {"__typename": "NotFound"}}
        sent = json.dumps({"data": answer}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(sent)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # wrk stopping doesn't wait for answers
            self.wfile.write(sent)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def fake_sale() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSale)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


# wrk, against a stand-in for the service.
@pytest.mark.slow
def test_the_hold_sale_confirms_each_hold_it_makes_as_its_customer(
    fake_sale: int, tmp_path: Path
) -> None:
    (tmp_path / "hold_event_id.txt").write_text("hold-event\n")
    (tmp_path / "hot_tokens.txt").write_text("".join(f"fan-{n}\n" for n in range(1, 1001)))
    result = _wrk(_require_wrk(), HOLD_SALE, fake_sale, 1, work=tmp_path)
    assert result["unexpected_results"] == result["graphql_errors"] == 0
    assert result["successes"] == result["requests"] > 0
    # Every hold made is confirmed by its customer, but those still queued when wrk stopped.
    assert result["confirmed"] > 0
    assert 0 <= FakeSale.made - result["confirmed"] <= HOLD_SALE.connections


@pytest.mark.slow
def test_the_subscribers_receive_a_sales_changes_each_matched_to_its_commit(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    event_id = insert_event(engine, capacity=100)
    event_key = key_of(event_id, "Event")
    assert event_key is not None
    env = {"DATABASE_URL": database_url, "TICKETING_JWT_SECRET": JWT_SECRET}
    with serve(env, log_dir=tmp_path) as server, live.commit_log(engine, event_key):
        url = f"{server.url.replace('http', 'ws', 1)}/graphql"
        subscribers = live.Subscribers(
            url, event_id, tmp_path / "received.json", subscriptions=20, connections=5
        )
        with subscribers, httpx.Client(base_url=server.url) as http:
            start = time.time()
            for fan in range(30):
                variables = {"input": {"eventId": event_id, "quantity": 1 + fan % 2}}
                made = gql(http, RESERVE, variables, headers=auth(f"fan-{fan}"))["data"]
                assert made == {"createReservation": {"__typename": "ReservationPayload"}}
            end = time.time()
            last = live.settled_value(engine, event_key)
            subscribers.finish(last)
        commits = live.commit_times(engine)
    # 30 reservations of 1 or 2 tickets, each its own commit and value.
    assert (last, len(commits), min(commits)) == (55, 30, 55)
    assert subscribers.errors == []
    assert len(subscribers.received) == 20
    for received in subscribers.received:
        values = [value for _, value in received]
        assert (values[0], values[-1]) == (100, 55)  # the value at subscribing, the last
        assert values == sorted(values, reverse=True)
    figures = live.analyse(subscribers.received, commits, start, end)
    assert (figures.behind, figures.unstamped) == (0, 0)
    assert figures.messages_per_s > 0
    assert 0 < figures.delay_p50_ms <= figures.delay_p99_ms
    assert 0 < figures.shown_p50_ms <= figures.shown_p99_ms
    with engine.connect() as connection:  # the trigger is gone with the measurement
        assert not connection.scalar(
            sa.text("SELECT count(*) FROM pg_trigger WHERE tgname = 'bench_commit_logged'")
        )


def test_the_commit_to_subscriber_delay_runs_until_the_value_or_a_newer_one_arrives() -> None:
    # Commits of 9 at 10.0 s, 8 at 10.1 s and 7 at 10.2 s; a subscriber shown 8 at 10.15 s,
    # then 7 at 10.5 s; another never shown anything newer than 9.
    commits = {9: 10.0, 8: 10.1, 7: 10.2}
    received = [[(10.15, 8), (10.5, 7)], [(9.0, 10), (10.05, 9)]]
    figures = live.analyse(received, commits, start=10.0, end=11.0)
    assert figures.messages_per_s == 3  # those in the window
    assert figures.behind == 1
    assert figures.unstamped == 0
    # Message delays: 0.05 (8), 0.3 (7), 0.05 (9); the nearest-rank percentiles.
    assert round(figures.delay_p50_ms) == 50
    assert round(figures.delay_p99_ms) == 300
    # Shown: 9 after 0.15 s, 8 after 0.05 s, 7 after 0.3 s to the first; 9 after 0.05 s to
    # the second (8 and 7 never reached it).
    assert round(figures.shown_p50_ms) == 50
    assert round(figures.shown_p99_ms) == 300


def test_the_capacity_model_is_written_from_the_run_it_names() -> None:
    written = capacity.CAPACITY.read_text()
    named = re.search(r"figures of \[(bench/results/[^\]]+)\.md\]", written)
    assert named, "bench/CAPACITY.md names no results file"
    figures = capacity.Figures.from_json((ROOT / f"{named.group(1)}.json").read_text())
    assert written == capacity.render(figures), "run python -m bench.capacity on its figures"


def _figures_with(coalesced: capacity.Ceiling | None) -> capacity.Figures:
    def scenario(server_cpu_ms: float, database_cpu_ms: float) -> capacity.Scenario:
        return capacity.Scenario(100, server_cpu_ms, database_cpu_ms, 50)

    return capacity.Figures(
        results="bench/results/x.md",
        commit="abc",
        cores=2,
        postgresql="16",
        browse=scenario(0.14, math.nan),
        my_reservations=scenario(2.0, 0.3),
        hot_sale=scenario(1.4, 0.5),
        single_row=capacity.Ceiling(reservations_per_s=800, per_lock=1, database_cpu_ms=1.0),
        coalesced=coalesced,
    )


def test_the_capacity_model_is_arithmetic_on_the_figures() -> None:
    single = capacity.render(_figures_with(None))
    # 10,000/s x 1.4 ms = 14 busy cores, at 70% busy: 20; 100,000/s x 0.14 ms: 14 -> 20.
    assert "14.0 busy cores, so **20 app cores**" in single
    assert "10,000 x 0.50 ms = 5.0 busy cores, so **8 database cores**" in single
    assert "the row takes 800 turns a second here (12x short of the target)" in single
    assert "not measured (the database ran on another machine)" in single
    assert "bound by its row's turns" in single
    # 8,000/s at 10 per lock: 800 turns; 10,000/s needs 12.5 per turn, more than 10.
    short = capacity.Ceiling(reservations_per_s=8000, per_lock=10, database_cpu_ms=0.2)
    assert "needs 12 reservations per turn" in capacity.render(_figures_with(short))
    assert "bound by its row's turns" in capacity.render(_figures_with(short))
    enough = capacity.Ceiling(reservations_per_s=24000, per_lock=20, database_cpu_ms=0.2)
    rendered = capacity.render(_figures_with(enough))
    assert "within what the batch size setting allows" in rendered
    assert "bound by nothing of the row's" in rendered


def test_a_run_that_measured_it_all_gives_the_capacity_figures(engine: Engine) -> None:
    def measured(name: str, rate: float, cpu_ms: float) -> Measured:
        run = Run(rate, rate, 1.0, 9.0, 0, 100.0, cpu_ms, 0.9, database_cpu_ms_per_request=0.1)
        return Measured(name, 32, [run])

    rows = {
        "browse": measured("browse", 10_000, 0.1),
        "my reservations": measured("my reservations", 400, 3.0),
        HOT_SALE.name: measured(HOT_SALE.name, 500, 2.0),
    }
    results = ROOT / "bench" / "results" / "x.md"
    assert _capacity_figures(rows, engine, results) is None  # no database ceiling
    rows[DB_CEILING_NAME] = measured(DB_CEILING_NAME, 800, 0.0)
    figures = _capacity_figures(rows, engine, results)
    assert figures is not None
    assert figures.results == "bench/results/x.md"
    assert (figures.hot_sale.server_cpu_ms, figures.single_row.reservations_per_s) == (2.0, 800)
    assert figures.coalesced is None
    assert capacity.Figures.from_json(figures.to_json()) == figures
    rows[DB_BATCH_CEILING_NAME] = measured(DB_BATCH_CEILING_NAME, 8000, 0.0)
    figures = _capacity_figures(rows, engine, results)
    assert figures is not None
    assert figures.coalesced == capacity.Ceiling(8000, per_lock=BATCH_SIZE, database_cpu_ms=0.1)
    assert capacity.Figures.from_json(figures.to_json()) == figures
